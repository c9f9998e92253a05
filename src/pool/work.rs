//! The caller's own error type in `run` and `transaction`.
//!
//! The retry loop decides on the crate's [`Error`]. The work may fail with any `E` that a
//! crate error converts into: the driver's error and the crate's own are recognised (and
//! classified: a lost connection is a failover, a serialization failure can be retried);
//! any other `E` is kept aside, stands in the loop as [`Error::work`], and comes back to the
//! caller unchanged (rolled back, never retried).

use std::any::Any;

use crate::error::{Error, Result};

/// The errors of the caller's work, for one retried call.
pub(crate) struct WorkErrors<E> {
    kept: Option<E>,
}

impl<E: Send + 'static> WorkErrors<E> {
    pub(crate) fn new() -> WorkErrors<E> {
        WorkErrors { kept: None }
    }

    /// What the retry loop sees of the work's error `err`: a driver error `D` converted
    /// with `from_driver`, then classified with `classify` (as is a crate error); any other
    /// error is kept for [`finish`](WorkErrors::finish).
    pub(crate) fn take<D: 'static>(
        &mut self,
        err: E,
        from_driver: impl FnOnce(D) -> Error,
        classify: impl FnOnce(Error) -> Error,
    ) -> Error {
        let mut slot = Some(err);
        let any: &mut dyn Any = &mut slot;
        if let Some(driver) = any.downcast_mut::<Option<D>>().and_then(Option::take) {
            return classify(from_driver(driver));
        }
        if let Some(crate_error) = any.downcast_mut::<Option<Error>>().and_then(Option::take) {
            return classify(crate_error);
        }
        self.kept = slot;
        Error::work()
    }

    /// The call's result in the caller's type: the work's own error unchanged, any other
    /// error converted.
    pub(crate) fn finish<T>(self, result: Result<T>) -> std::result::Result<T, E>
    where
        E: From<Error>,
    {
        self.finish_as(result, |kept| kept, E::from)
    }

    /// The call's result in a type `R` that both the work's own error (`kept`) and the
    /// crate's (`converted`) turn into.
    pub(crate) fn finish_as<T, R>(
        mut self,
        result: Result<T>,
        kept: impl FnOnce(E) -> R,
        converted: impl FnOnce(Error) -> R,
    ) -> std::result::Result<T, R> {
        match result {
            Ok(value) => Ok(value),
            Err(err) if err.is_work() => Err(match self.kept.take() {
                Some(own) => kept(own),
                None => converted(err),
            }),
            Err(err) => Err(converted(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Mine {
        Refused(&'static str),
        Pool(String),
    }

    impl From<Error> for Mine {
        fn from(err: Error) -> Mine {
            Mine::Pool(err.to_string())
        }
    }

    #[test]
    fn the_callers_own_error_comes_back_unchanged() {
        let mut errors = WorkErrors::<Mine>::new();
        let seen = errors.take::<std::io::Error>(
            Mine::Refused("no funds"),
            |_| Error::driver("driver"),
            |e| e,
        );
        assert!(seen.is_work());
        assert_eq!(
            errors.finish::<()>(Err(seen)),
            Err(Mine::Refused("no funds"))
        );
    }

    #[test]
    fn driver_and_crate_errors_are_classified() {
        let mut errors = WorkErrors::<Error>::new();
        let seen = errors.take::<std::io::Error>(
            Error::driver("constraint"),
            |_| Error::driver("driver"),
            |_| Error::failover("classified"),
        );
        assert!(seen.is_failover());
        let mut errors = WorkErrors::<std::io::Error>::new();
        let seen = errors.take::<std::io::Error>(
            std::io::Error::other("lost"),
            |_| Error::connect("converted"),
            |e| e,
        );
        assert!(seen.is_connect());
    }

    #[test]
    fn crate_errors_convert_into_the_callers_type() {
        let errors = WorkErrors::<Mine>::new();
        assert_eq!(
            errors.finish::<()>(Err(Error::closed())),
            Err(Mine::Pool(Error::closed().to_string()))
        );
    }
}
