//! `&AuroraPool` wherever sqlx takes an executor or an [`Acquire`]: the writer's pool, so
//! that queries on `&pool`, `sqlx::migrate!().run(&pool)` and `pool.begin()` work unchanged
//! after the switch (what changes is listed in the README: `pool.acquire()` takes a role, a
//! `PgListener` connects with `&pool.writer()`). Reads go to a reader only through
//! [`AuroraPool::reader`].

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Acquire, Either, Execute, Executor, PgPool, Postgres, Transaction};

use sqlx_core::sql_str::SqlStr;

use super::AuroraPool;

// Each method takes the writer's pool once and hands the statement to it: the pool follows
// the writer, and sqlx's own `&PgPool` executor holds its clone for as long as the stream
// or future lives.
impl<'p> Executor<'p> for &'_ AuroraPool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = PgPool::clone(&self.core.writer());
        <&PgPool as Executor<'e>>::fetch_many(&pool, query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let pool = PgPool::clone(&self.core.writer());
        <&PgPool as Executor<'e>>::fetch_optional(&pool, query)
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let pool = PgPool::clone(&self.core.writer());
        <&PgPool as Executor<'e>>::prepare_with(&pool, sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'e, Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        let pool = PgPool::clone(&self.core.writer());
        <&PgPool as Executor<'e>>::describe(&pool, sql)
    }
}

impl<'a> Acquire<'a> for &'_ AuroraPool {
    type Database = Postgres;

    type Connection = sqlx::pool::PoolConnection<Postgres>;

    fn acquire(self) -> BoxFuture<'static, Result<Self::Connection, sqlx::Error>> {
        let pool = PgPool::clone(&self.core.writer());
        Box::pin(async move { pool.acquire().await })
    }

    fn begin(self) -> BoxFuture<'static, Result<Transaction<'a, Postgres>, sqlx::Error>> {
        let pool = PgPool::clone(&self.core.writer());
        Box::pin(async move { pool.begin().await })
    }
}
