#!/usr/bin/env python3
"""Offline check of the SAM template: transform it with aws-sam-translator
(no AWS calls) and lint the resulting CloudFormation with cfn-lint.

Usage: check_template.py [template.yaml]   (needs aws-sam-translator, cfn-lint)
Exits non-zero if the transform fails or cfn-lint reports any error/warning.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402


class StubPolicyLoader:
    """Stands in for ManagedPolicyLoader: no IAM calls (no managed policies are
    named in the template; SAM's own basic execution role ARN is built in)."""

    def load(self):
        return {}


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    with open(path, encoding="utf-8") as f:
        template = yaml_parse(f.read())

    # `sam build`/`sam package` would replace the local CodeUri with an S3
    # object; the translator only accepts that form.
    functions = [
        name
        for name, res in template.get("Resources", {}).items()
        if res.get("Type") == "AWS::Serverless::Function"
    ]
    for name in functions:
        template["Resources"][name]["Properties"]["CodeUri"] = f"s3://bucket/{name}.zip"

    try:
        output = transform(template, {}, StubPolicyLoader())
    except Exception as err:  # InvalidDocumentException carries the causes
        causes = getattr(err, "causes", None) or []
        print(f"SAM transform failed: {err}", file=sys.stderr)
        for cause in causes:
            print(f"  - {getattr(cause, 'message', cause)}", file=sys.stderr)
        return 1

    out_dir = tempfile.mkdtemp(prefix="sam-check-")
    out_path = os.path.join(out_dir, "template.json")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(output, f, indent=2, sort_keys=True)
    print(f"transform ok: {len(functions)} functions, "
          f"{len(output['Resources'])} CloudFormation resources -> {out_path}")

    # cfn-lint installed next to this interpreter (a venv), else from PATH.
    cfn_lint = os.path.join(os.path.dirname(sys.executable), "cfn-lint")
    if not os.path.exists(cfn_lint):
        cfn_lint = shutil.which("cfn-lint") or "cfn-lint"
    lint = subprocess.run(
        [cfn_lint, "--regions", "us-east-1", "--", out_path],
        check=False,
    )
    if lint.returncode != 0:
        print(f"cfn-lint failed (exit {lint.returncode})", file=sys.stderr)
        return 1
    print("cfn-lint ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
