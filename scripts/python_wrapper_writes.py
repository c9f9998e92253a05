#!/usr/bin/env python3
"""Write loop through the AWS Advanced Python Wrapper, for `examples/failover_probe.rs`.

Connects with the wrapper's defaults (plugins `initial_connection,aurora_connection_tracker,
failover_v2,host_monitoring_v2`) plus whatever `key=value` arguments follow, then writes
every 10 ms until the duration runs out. Prints `ready` once connected, then one line per
successful write, `<unix time> <instance id>`, and `error <unix time> <kind>` on failures.

    python_wrapper_writes.py <conninfo> <host pattern> <seconds> [key=value ...]

Needs `pip install aws-advanced-python-wrapper "psycopg[binary]"`.
"""

import sys
import time

import psycopg
from aws_advanced_python_wrapper import AwsWrapperConnection
from aws_advanced_python_wrapper.errors import FailoverSuccessError

WRITE = (
    "SELECT pg_catalog.aurora_db_instance_identifier() "
    "FROM (SELECT pg_catalog.txid_current()) AS t"
)


def connect(conninfo, pattern, extra):
    return AwsWrapperConnection.connect(
        psycopg.Connection.connect,
        conninfo,
        cluster_instance_host_pattern=pattern,
        autocommit=True,
        **extra,
    )


def main():
    conninfo, pattern, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    extra = dict(arg.split("=", 1) for arg in sys.argv[4:])
    conn = connect(conninfo, pattern, extra)
    print("ready", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        try:
            with conn.cursor() as cursor:
                cursor.execute(WRITE)
                served = cursor.fetchone()[0]
            print(f"{time.time():.6f} {served}", flush=True)
        except FailoverSuccessError:
            # The wrapper moved the connection to the new writer: run the statement again.
            continue
        except Exception as err:  # noqa: BLE001 - any other failure is recorded, then retried
            print(f"error {time.time():.6f} {type(err).__name__}", flush=True)
            try:
                conn = connect(conninfo, pattern, extra)
            except Exception:  # noqa: BLE001
                time.sleep(0.1)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
