"""Render the job role's least-privilege S3 policy (template: emr/iam_job_role_policy.json).

The cluster's EC2 instance profile (``roles.job_flow`` in conf/emr.yaml) needs: read and write in
the run prefix only (code, configs, uploaded inputs, outputs, logs) and read-only access to inputs
read in place from other s3:// prefixes. Template tokens: ``{{run_bucket}}``/``{{run_key}}``,
``{{all_bucket_arns}}`` and ``{{input_object_arns}}`` (expanded to lists) and one ``ListInput``
statement per input prefix (``{{input_bucket}}``/``{{input_key}}``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

TEMPLATE = Path(__file__).with_name("iam_job_role_policy.json")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.rstrip("/")


def _sub(obj, tokens: dict[str, str]):
    if isinstance(obj, dict):
        return {k: _sub(v, tokens) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sub(v, tokens) for v in obj]
    for name, value in tokens.items():
        obj = obj.replace("{{" + name + "}}", value)
    return obj


def render_policy(run_prefix: str, input_uris: list[str]) -> dict:
    """The policy for one run prefix (``s3://bucket/key``; the key may end in ``*`` for all runs)
    and the s3:// inputs it reads in place (other schemes need no IAM)."""
    template = json.loads(TEMPLATE.read_text())
    run_bucket, run_key = _split(run_prefix)
    s3_inputs = sorted({_split(u) for u in input_uris if u.startswith("s3://")})
    buckets = sorted({run_bucket} | {b for b, _ in s3_inputs})
    statements = []
    for st in template["Statement"]:
        if st["Sid"] in ("ReadInputs", "ListInput") and not s3_inputs:
            continue
        if st["Sid"] == "ListInput":
            statements += [_sub(st, {"input_bucket": b, "input_key": k}) | {"Sid": f"ListInput{i}"}
                           for i, (b, k) in enumerate(s3_inputs)]
            continue
        st = _sub(st, {"run_bucket": run_bucket, "run_key": run_key})
        if st["Resource"] == ["{{all_bucket_arns}}"]:
            st["Resource"] = [f"arn:aws:s3:::{b}" for b in buckets]
        elif st["Resource"] == ["{{input_object_arns}}"]:
            st["Resource"] = [f"arn:aws:s3:::{b}/{k}/*" if k else f"arn:aws:s3:::{b}/*" for b, k in s3_inputs]
        statements.append(st)
    policy = {"Version": template["Version"], "Statement": statements}
    left = re.findall(r"\{\{\w+\}\}", json.dumps(policy))
    if left:
        raise ValueError(f"{TEMPLATE}: unreplaced template tokens {sorted(set(left))} in the rendered policy")
    return policy
