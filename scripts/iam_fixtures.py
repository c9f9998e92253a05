#!/usr/bin/env python3
"""Writes tests/fixtures/iam_tokens.json: RDS IAM auth tokens made by botocore with a fixed
clock, for the cross-check in tests/iam_tokens.rs.

    pip install botocore && python3 scripts/iam_fixtures.py

The file is committed; CI does not need botocore. Re-run it only to add cases.
"""
import datetime
import json
import pathlib
from unittest import mock

import botocore.session

CASES = [
    # host, port, user, region, access key, secret, session token, unix time
    ("prod-instance.us-east-1.rds.amazonaws.com", 3306, "peccy", "us-east-1", "akid", "secret", None, 1724709600),
    ("db.cluster-abc123.eu-west-1.rds.amazonaws.com", 5432, "app_iam", "eu-west-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None, 1795317600),
    ("instance-2.abc123.us-east-1.rds.amazonaws.com", 6432, "app", "us-east-1", "ASIAEXAMPLE", "c2VjcmV0", "FwoGZXIvYXdzEXAMPLE//////////sessiontoken+/=", 1795317600),
    ("db.cluster-xyz.rds.cn-north-1.amazonaws.com.cn", 5432, "user+x@y", "cn-north-1", "akid", "secret", None, 1700000000),
    ("db.cluster-xyz.us-gov-west-1.rds.amazonaws.com", 5432, "iam user", "us-gov-west-1", "akid", "secret", "token with space", 1700000123),
    ("10.0.0.5", 15432, "100%_sure", "ap-southeast-2", "akid", "secret", None, 1600000000),
    ("custom.example.com", 5432, "a@b.c", "sa-east-1", "akid2", "s/e+c=r", None, 1650000000),
]


def token(host, port, user, region, akid, secret, session_token, at):
    session = botocore.session.get_session()
    session.set_credentials(akid, secret, session_token)
    rds = session.create_client("rds", region_name=region)
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        return rds.generate_db_auth_token(host, port, user, Region=region)


def main():
    fixtures = []
    for host, port, user, region, akid, secret, session_token, at in CASES:
        fixtures.append({
            "host": host, "port": port, "user": user, "region": region,
            "access_key_id": akid, "secret_access_key": secret, "session_token": session_token,
            "unix_time": at,
            "token": token(host, port, user, region, akid, secret, session_token, at),
        })
    out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "iam_tokens.json"
    out.write_text(json.dumps({"generator": f"botocore {botocore.__version__}", "cases": fixtures}, indent=2) + "\n")
    print(f"wrote {len(fixtures)} cases to {out}")


if __name__ == "__main__":
    main()
