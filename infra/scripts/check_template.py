#!/usr/bin/env python3
"""Offline check of the SAM template: transform it with aws-sam-translator
(no AWS calls), lint the resulting CloudFormation with cfn-lint, then assert
the functions' shape and least-privilege IAM on the transformed template,
that the streamed routes are on the REST API, streamed and authorized
(and on no HTTP API), that the HTTP API routes are JWT-authorized, and the
key rotation wiring (Secrets Manager may invoke the rotation function, the
sweep schedule, key events bus -> rule -> SNS topic).

Usage: check_template.py [template.yaml]   (needs aws-sam-translator, cfn-lint)
Exits non-zero if the transform fails, cfn-lint reports any error/warning, or
a policy/function assertion fails (each failure is printed).
"""
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# The translator warns about feature toggles it has no config for (offline).
logging.getLogger("samtranslator.feature_toggle.feature_toggle").setLevel(logging.ERROR)

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402

# --------------------------------------------------------------- policy ----
#
# The IAM actions each function's role may grant, by logical id: exactly
# these, no more, no fewer (the union over every Fn::If branch, i.e. with
# every optional parameter set). THIS MUST MATCH THE SDK CALLS IN THE CODE
# (shared/src/store/dynamo/, shared/src/store/secrets_manager.rs,
# shared/src/app.rs): a new SDK call needs its action here and in
# template.yaml, a removed call must leave both. KMS actions are those the
# services make on the function's behalf (kms:ViaService is asserted).
# (Rotation: shared/src/store/rotation.rs, shared/src/rotation.rs,
# shared/src/events.rs.)
EXPECTED_ACTIONS = {
    # Query (also the audit log), GetItem, PutItem (conditional; audit
    # events), DeleteItem, UpdateItem (validation rate counters: a save with
    # validate: true); CreateSecret (tagged: TagResource), PutSecretValue
    # (also a staged key, label BYOKSTAGED), GetSecretValue (cache misses),
    # DeleteSecret, RestoreSecret (re-added while scheduled for deletion),
    # DescribeSecret + UpdateSecretVersionStage (a cancelled rotation drops
    # its labels), RotateSecret (starts a rotation; needs InvokeFunction on
    # the rotation function it names).
    "KeysFunction": {
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "secretsmanager:CreateSecret",
        "secretsmanager:PutSecretValue",
        "secretsmanager:GetSecretValue",
        "secretsmanager:DeleteSecret",
        "secretsmanager:RestoreSecret",
        "secretsmanager:TagResource",
        "secretsmanager:DescribeSecret",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:RotateSecret",
        "lambda:InvokeFunction",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    },
    # Query, PutItem. No Secrets Manager.
    "SettingsFunction": {
        "dynamodb:Query",
        "dynamodb:PutItem",
        "kms:Decrypt",
    },
    # Query (resolution), GetItem (the stored key to check), PutItem (the
    # outcome on the key's metadata; audit events), UpdateItem (validation
    # rate counters); GetSecretValue on the user secret checked (KMS Decrypt
    # via Secrets Manager) and on the team secrets, at cold start.
    "ValidateFunction": {
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "kms:Decrypt",
        "secretsmanager:GetSecretValue",
    },
    # Query (the caller's keys, for accessibility); GetItem and UpdateItem
    # of personal API keys (TOKEN_USE). Which team keys exist comes from
    # the variables; no secret is read.
    "ModelsFunction": {
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "kms:Decrypt",
    },
    # Query (resolution); UpdateItem (request-limit counters, usage
    # aggregates), PutItem (raw usage entries, budgets) and GetItem
    # (budgets), only on the partitions of LEADING_KEYS; PutEvents (budget
    # alerts, on the stack's bus); GetSecretValue on the paying user secret
    # (cache misses; KMS Decrypt via Secrets Manager), on the team secrets
    # and on the alert webhook's secret, at cold start.
    "CompletionFunction": {
        # Only with TeamBedrock=role (BEDROCK_TEAM_INVOKE).
        "bedrock:InvokeModel",
        "bedrock:InvokeModelWithResponseStream",
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",
        "events:PutEvents",
        "kms:Decrypt",
        "secretsmanager:GetSecretValue",
    },
    # Rotation steps and the sweep: GetItem (the rotating key's record),
    # Query (audit log), PutItem (record updates, conditional; audit
    # events), Scan (the sweep walks every key record); DescribeSecret
    # (labels, owner tags), GetSecretValue, PutSecretValue (AWSPENDING),
    # UpdateSecretVersionStage (promote, discard), DeleteSecret (orphans),
    # ListSecrets (the orphan search; Resource "*", see UNSCOPED_ACTIONS);
    # PutEvents (key events, on the stack's bus).
    "RotationFunction": {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:Scan",
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:DeleteSecret",
        "secretsmanager:ListSecrets",
        "events:PutEvents",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    },
}

# Which secrets each function may touch: "user" = the per-user secrets under
# SecretPrefix, "team" = the team secret parameters (read at cold start),
# "list" = Resource "*" for the UNSCOPED_ACTIONS only (ListSecrets).
EXPECTED_SECRET_SCOPES = {
    "KeysFunction": {"user"},
    "SettingsFunction": set(),
    "ValidateFunction": {"user", "team"},
    "ModelsFunction": set(),
    "CompletionFunction": {"user", "team", "alert"},
    "RotationFunction": {"user", "list"},
}

# The only functions that may hold a Secrets Manager write action.
SECRET_WRITERS = {"KeysFunction", "RotationFunction"}

# Actions IAM does not scope to a resource: a statement holding only these
# may (must) say Resource "*". Nothing else may.
UNSCOPED_ACTIONS = {
    # Lists names, tags and dates (no values) of every secret in the account
    # and region; the code keeps those under SecretPrefix.
    "secretsmanager:ListSecrets",
}

# Secrets Manager actions that only read; every other secretsmanager action
# counts as a write (CreateSecret, PutSecretValue, DeleteSecret,
# RestoreSecret, UpdateSecret*, TagResource, ...).
SECRET_READS = {
    "secretsmanager:GetSecretValue",
    "secretsmanager:BatchGetSecretValue",
    "secretsmanager:DescribeSecret",
    "secretsmanager:ListSecretVersionIds",
    "secretsmanager:GetResourcePolicy",
    "secretsmanager:ListSecrets",
}

# Where per-user secrets live: the only Secrets Manager resource besides the
# team secret parameters.
USER_SECRETS_ARN = (
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
    ":secret:${SecretPrefix}*"
)

# Team key secrets: environment variable read by the code
# (config::team_secret_env) -> template parameter holding the ARN.
TEAM_SECRET_PARAMS = {
    "BYOK_TEAM_GATEWAY_SECRET_ARN": "TeamGatewayKeySecretArn",
    "BYOK_TEAM_OPENAI_SECRET_ARN": "TeamOpenAiKeySecretArn",
    "BYOK_TEAM_ANTHROPIC_SECRET_ARN": "TeamAnthropicKeySecretArn",
    "BYOK_TEAM_XAI_SECRET_ARN": "TeamXaiKeySecretArn",
    "BYOK_TEAM_OPENROUTER_SECRET_ARN": "TeamOpenRouterKeySecretArn",
    "BYOK_TEAM_GOOGLE_SECRET_ARN": "TeamGoogleKeySecretArn",
    "BYOK_TEAM_GROQ_SECRET_ARN": "TeamGroqKeySecretArn",
    "BYOK_TEAM_MISTRAL_SECRET_ARN": "TeamMistralKeySecretArn",
    "BYOK_TEAM_DEEPSEEK_SECRET_ARN": "TeamDeepSeekKeySecretArn",
    "BYOK_TEAM_TOGETHER_SECRET_ARN": "TeamTogetherKeySecretArn",
    "BYOK_TEAM_FIREWORKS_SECRET_ARN": "TeamFireworksKeySecretArn",
    "BYOK_TEAM_PERPLEXITY_SECRET_ARN": "TeamPerplexityKeySecretArn",
    "BYOK_TEAM_CEREBRAS_SECRET_ARN": "TeamCerebrasKeySecretArn",
    "BYOK_TEAM_COHERE_SECRET_ARN": "TeamCohereKeySecretArn",
    "BYOK_TEAM_VERTEX_SECRET_ARN": "TeamVertexKeySecretArn",
    "BYOK_TEAM_BEDROCK_SECRET_ARN": "TeamBedrockKeySecretArn",
}
# The alert webhook's signing secret: variable -> parameter, and the one
# function that reads it (at cold start) with its grant.
ALERT_SECRET_PARAM = ("BYOK_ALERT_WEBHOOK_SECRET_ARN", "AlertWebhookSecretArn")
ALERT_SECRET_READERS = {"CompletionFunction"}
# Functions that resolve with team keys: they get every team variable.
TEAM_SECRET_RESOLVERS = {"ValidateFunction", "ModelsFunction", "CompletionFunction"}
# Of those, the ones that read the secrets at cold start (the code's
# `Function::team_keys`); the others only learn which team keys exist.
TEAM_SECRET_READERS = {"ValidateFunction", "CompletionFunction"}

# Routes that stream their response, (METHOD, path) -> function. Each must be
# on a REST API (HTTP APIs buffer the whole response) as a Lambda proxy
# integration with responseTransferMode STREAM calling InvokeWithResponseStream,
# behind a Cognito user pool authorizer, and on no HTTP API.
STREAMING_ROUTES = {("POST", "/v1/chat/completions"): "CompletionFunction",
                    ("POST", "/v1/embeddings"): "CompletionFunction",
                    ("POST", "/v1/messages"): "CompletionFunction"}
# CORS preflights on the REST API (browsers send them without a token): the
# only REST methods without an authorizer, each a Lambda proxy to the
# function of its streamed route, which answers it.
PREFLIGHT_ROUTES = {("OPTIONS", "/v1/chat/completions"): "CompletionFunction",
                    ("OPTIONS", "/v1/embeddings"): "CompletionFunction",
                    ("OPTIONS", "/v1/messages"): "CompletionFunction",
                    ("OPTIONS", "/v1/models"): "ModelsFunction"}
# Other /v1/* routes on the REST API, so `<StreamingApiUrl>/v1` serves an
# OpenAI client whole: answered in one piece (a plain Lambda proxy), and
# authenticated in the function like the streamed ones.
BUFFERED_REST_ROUTES = {("GET", "/v1/models"): "ModelsFunction"}
# The REST API's Cognito authorizer takes its user pool from this parameter.
USER_POOL_PARAM = "UserPoolArn"
# API Gateway's limit on a streaming integration's timeout (15 minutes).
MAX_STREAM_TIMEOUT_MS = 900_000
# REST API stages prefix the path the function sees unless this is set.
IGNORE_STAGE_ENV = "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH"

# Routes that must be on the HTTP API, (METHOD, path) -> function (besides
# the rule that every HTTP API route has the JWT authorizer).
HTTP_ROUTES = {
    ("PUT", "/api/keys/{service}/pending"): "KeysFunction",
    ("POST", "/api/keys/{service}"): "KeysFunction",
    ("PATCH", "/api/keys/{service}/{id}"): "KeysFunction",
    ("DELETE", "/api/keys/{service}/{id}"): "KeysFunction",
    ("PUT", "/api/keys/{service}/{id}/pending"): "KeysFunction",
    ("DELETE", "/api/keys/{service}/{id}/pending"): "KeysFunction",
    ("DELETE", "/api/keys/{service}/pending"): "KeysFunction",
    ("GET", "/api/usage"): "KeysFunction",
    ("GET", "/api/usage/requests"): "KeysFunction",
    ("GET", "/api/admin/usage"): "KeysFunction",
    ("GET", "/api/admin/budgets"): "KeysFunction",
    ("PUT", "/api/admin/budgets/users/{userId}"): "KeysFunction",
    ("GET", "/api/admin/budgets/users/{userId}"): "KeysFunction",
    ("DELETE", "/api/admin/budgets/users/{userId}"): "KeysFunction",
    ("PUT", "/api/admin/budgets/tenants/{tenantId}"): "KeysFunction",
    ("GET", "/api/admin/budgets/tenants/{tenantId}"): "KeysFunction",
    ("DELETE", "/api/admin/budgets/tenants/{tenantId}"): "KeysFunction",
    ("GET", "/api/budget"): "KeysFunction",
    ("GET", "/api/tokens"): "KeysFunction",
    ("POST", "/api/tokens"): "KeysFunction",
    ("DELETE", "/api/tokens/{id}"): "KeysFunction",
}

# Functions whose DynamoDB writes are confined to some partitions: every
# statement of theirs granting a write must carry ForAllValues:StringLike
# on dynamodb:LeadingKeys with exactly these patterns (shared/src/store/
# dynamo/ratelimit.rs: rate counters; shared/src/store/dynamo/usage.rs: the ledger;
# shared/src/store/dynamo/budget.rs: budgets).
LEADING_KEYS = {
    "CompletionFunction": {"RATE#*", "USAGE#*", "USAGEDAY#*", "USAGEREQ#*", "BUDGET#*"},
    "ModelsFunction": set(),
}
# Personal API keys presented on /v1/* (shared/src/store/dynamo/
# api_tokens.rs): functions that authenticate them may write only a key's
# lastUsedAt, with UpdateItem on exactly these partitions (both of its
# items, in one transaction).
TOKEN_USE_KEYS = {"APITOKEN#*", "APITOKENS#*"}
TOKEN_USE_ATTRIBUTES = {"pk", "sk", "lastUsedAt"}
# /v1/* routes authenticate in the function (a personal API key is not a
# JWT API Gateway could check): no authorizer on them, and their function
# verifies tokens of the issuer the HTTP API's authorizer trusts.
IN_FUNCTION_AUTH_ENV = {
    "BYOK_JWKS_URL": {"Fn::Sub": "${JwtIssuer}/.well-known/jwks.json"},
    "BYOK_JWT_ISSUER": {"Ref": "JwtIssuer"},
    "BYOK_JWT_AUDIENCE": {"Fn::Join": [",", {"Ref": "JwtAudience"}]},
}
# The team path's Bedrock through the completion function's own role: a
# statement of exactly these actions, only under this condition, only on
# foundation models and inference profiles.
BEDROCK_TEAM_INVOKE = {
    "function": "CompletionFunction",
    "condition": "HasTeamBedrockRole",
    "actions": {"bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"},
    "resources": (":bedrock:*::foundation-model/*", ":bedrock:*:${AWS::AccountId}:inference-profile/*"),
}
IN_FUNCTION_AUTH_HTTP_ROUTES = {("GET", "/v1/models"): "ModelsFunction"}
# Writes to key records allowed to such a function beside those partitions:
# UpdateItem on USER#* touching only these attributes (shared/src/store/
# dynamo/keys.rs: mark_key, a key's health after a completion used it).
KEY_HEALTH_WRITES = {
    "CompletionFunction": {"pk", "sk", "lastUsedAt", "cooldownUntil", "lastValidation",
                           "lastValidatedAt"}
}
DYNAMODB_WRITES = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                   "dynamodb:BatchWriteItem", "dynamodb:TransactWriteItems"}

# ------------------------------------------------------------ rotation ----
#
# The function Secrets Manager invokes for rotation steps and the schedule
# runs the sweep on; the schedule's parameter.
ROTATION_FUNCTION = "RotationFunction"
SWEEP_SCHEDULE_PARAM = "SweepSchedule"
# Functions that start rotations (secretsmanager:RotateSecret): each names
# the rotation function in this variable and may invoke exactly it.
ROTATION_FUNCTION_ENV = "BYOK_ROTATION_FUNCTION_ARN"
# lambda:InvokeFunction grants, function -> the functions it may invoke.
EXPECTED_INVOKES = {"KeysFunction": {ROTATION_FUNCTION}}
# Every function reads the rotation age (rotationDue in key views; the sweep).
ROTATION_AGE_ENV = ("BYOK_ROTATION_AGE_DAYS", "RotationAgeDays")
# Key events: the variable naming the bus; functions that publish (and so
# must have it and events:PutEvents on that bus, nothing else).
EVENT_BUS_ENV = "BYOK_EVENT_BUS_NAME"
EVENT_PUBLISHERS = {ROTATION_FUNCTION, "CompletionFunction"}
# shared/src/events.rs: EVENT_SOURCE and KeyEventKind::as_str.
EVENT_SOURCE = "byok.keys"
# Budget alerts (shared/src/events.rs: BUDGET_THRESHOLD) share the bus and rule.
KEY_EVENT_TYPES = {"key.invalid", "key.rotation_due", "key.rotated", "key.rotation_failed",
                   "key.stale", "budget.threshold"}

# The one managed policy a role may carry: SAM's own basic execution role
# (CloudWatch Logs), the only place `*` is tolerated.
BASIC_EXECUTION_ROLE = re.compile(
    r"^arn:(aws[a-z-]*|\$\{AWS::Partition\}):iam::aws:policy/service-role/"
    r"AWSLambdaBasicExecutionRole$"
)

NO_VALUE = {"Ref": "AWS::NoValue"}


class StubPolicyLoader:
    """Stands in for ManagedPolicyLoader: no IAM calls (no managed policies are
    named in the template; SAM's own basic execution role ARN is built in)."""

    def load(self):
        return {}


def as_list(value):
    return value if isinstance(value, list) else [value]


def branches(value):
    """The values an element can take: both branches of an Fn::If (nested
    ones too), without AWS::NoValue."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, yes, no = value["Fn::If"]
        return branches(yes) + branches(no)
    if value == NO_VALUE:
        return []
    return [value]


def expand(items):
    """A list whose elements may be Fn::If, flattened to every possible
    element."""
    out = []
    for item in as_list(items):
        out.extend(branches(item))
    return out


def show(value):
    return json.dumps(value, sort_keys=True)


class Checker:
    def __init__(self, output):
        self.res = output.get("Resources", {})
        self.conditions = output.get("Conditions", {})
        self.errors = []

    def fail(self, where, message):
        self.errors.append(f"{where}: {message}")

    # ------------------------------------------------------------ helpers --

    def of_type(self, cfn_type):
        return {k: v for k, v in self.res.items() if v.get("Type") == cfn_type}

    def getatt_arn_of(self, value, cfn_type):
        """True if value is {"Fn::GetAtt": [X, "Arn"]} for X of cfn_type."""
        if not (isinstance(value, dict) and set(value) == {"Fn::GetAtt"}):
            return False
        target = value["Fn::GetAtt"]
        if isinstance(target, str):
            target = target.split(".", 1)
        return (
            len(target) == 2
            and target[1] == "Arn"
            and self.res.get(target[0], {}).get("Type") == cfn_type
        )

    @staticmethod
    def getatt_target(value):
        """X of {"Fn::GetAtt": [X, attr]} (or "X.attr"); None otherwise."""
        if not (isinstance(value, dict) and set(value) == {"Fn::GetAtt"}):
            return None
        target = value["Fn::GetAtt"]
        return target.split(".", 1)[0] if isinstance(target, str) else target[0]

    def refers_to(self, value, name):
        """True if value is !Ref name or !GetAtt name.Arn."""
        return value == {"Ref": name} or (
            self.getatt_target(value) == name and self.getatt_arn_of(value, self.res.get(name, {}).get("Type"))
        )

    def role_documents(self, role_name):
        """Every policy document attached to a role: inline policies and
        AWS::IAM::Policy resources naming it."""
        role = self.res[role_name]["Properties"]
        docs = []
        for pol in expand(role.get("Policies", [])):
            docs.append((f"{role_name}/{pol.get('PolicyName', '?')}", pol.get("PolicyDocument", {})))
        for name, pol in self.of_type("AWS::IAM::Policy").items():
            if {"Ref": role_name} in as_list(pol["Properties"].get("Roles", [])):
                docs.append((name, pol["Properties"].get("PolicyDocument", {})))
        return docs

    def statements(self, document):
        """(statement, wrapping condition or None) for every statement a
        document can contain."""
        out = []
        for item in as_list(document.get("Statement", [])):
            if isinstance(item, dict) and set(item) == {"Fn::If"}:
                cond, yes, no = item["Fn::If"]
                out.extend((s, cond) for s in branches(yes))
                out.extend((s, f"!{cond}") for s in branches(no))
            else:
                out.append((item, None))
        return out

    def or_members(self, cond):
        """The conditions whose truth implies `cond` is true, as far as
        can be read off its definition (itself, or the members of an Fn::Or)."""
        members = {cond}
        definition = self.conditions.get(cond, {})
        if isinstance(definition, dict) and set(definition) == {"Fn::Or"}:
            for m in definition["Fn::Or"]:
                if not (isinstance(m, dict) and set(m) == {"Condition"}):
                    return None  # not readable: treat as unproven
                # A nested Or (Fn::Or takes at most 10) stands for its members.
                inner = self.or_members(m["Condition"])
                if inner is None:
                    return None
                members |= inner if len(inner) > 1 else {m["Condition"]}
                if len(inner) > 1:
                    members.discard(m["Condition"])
        return members

    # ------------------------------------------------------------- checks --

    def check_no_wildcards(self):
        """No Allow statement in any role or policy grants Action "*" or
        Resource "*", NotAction or NotResource; the only managed policy is
        SAM's basic execution role."""
        for name, role in self.of_type("AWS::IAM::Role").items():
            for arn in expand(role["Properties"].get("ManagedPolicyArns", [])):
                text = arn.get("Fn::Sub") if isinstance(arn, dict) else arn
                if not (isinstance(text, str) and BASIC_EXECUTION_ROLE.match(text)):
                    self.fail(name, f"managed policy {show(arn)} is not allowed "
                              "(only AWSLambdaBasicExecutionRole; grant inline statements)")
            for where, doc in self.role_documents(name):
                for st, _ in self.statements(doc):
                    self.check_statement_wildcards(where, st)
        for name in self.of_type("AWS::IAM::ManagedPolicy"):
            self.fail(name, "customer managed policies are not allowed; grant inline statements")
        # A KMS key policy's Resource is always "*" (it means this key); it
        # may only delegate to the account (IAM policies then decide).
        for name, key in self.of_type("AWS::KMS::Key").items():
            for st in as_list(key["Properties"].get("KeyPolicy", {}).get("Statement", [])):
                principal = st.get("Principal", {})
                aws = principal.get("AWS") if isinstance(principal, dict) else principal
                root = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
                if st.get("Effect") == "Allow" and aws != root:
                    self.fail(name, f"key policy statement {st.get('Sid')!r} allows "
                              f"{show(principal)}; only the account root (delegation to IAM)")

    def check_statement_wildcards(self, where, st):
        sid = st.get("Sid", "?")
        if "NotAction" in st or "NotResource" in st:
            self.fail(where, f"statement {sid}: NotAction/NotResource are not allowed")
        if st.get("Effect") != "Allow":
            return
        actions = expand(st.get("Action", []))
        for action in actions:
            if not isinstance(action, str) or "*" in action:
                self.fail(where, f"statement {sid}: wildcard or computed action {show(action)}")
        unscoped = bool(actions) and set(actions) <= UNSCOPED_ACTIONS
        resources = expand(st.get("Resource", []))
        ineffective = set(actions) & UNSCOPED_ACTIONS
        if ineffective and (not unscoped or resources != ["*"]):
            self.fail(where, f"statement {sid}: {sorted(ineffective)} take no resource; grant "
                      "them alone, on Resource \"*\" (scoped, IAM never matches them)")
        for resource in resources:
            if resource == "*" and unscoped:
                continue  # IAM accepts nothing else for these actions
            if resource == "*" or (isinstance(resource, str) and resource.endswith(":*")):
                self.fail(where, f"statement {sid}: Resource {show(resource)} is not allowed"
                          + (f" (only for {sorted(UNSCOPED_ACTIONS)}, alone in a statement)"
                             if resource == "*" else ""))

    def check_functions(self):
        functions = self.of_type("AWS::Lambda::Function")
        for name in sorted(set(functions) - set(EXPECTED_ACTIONS)):
            self.fail(name, "function has no entry in EXPECTED_ACTIONS (check_template.py); "
                      "add the actions its SDK calls need")
        for name in sorted(set(EXPECTED_ACTIONS) - set(functions)):
            self.fail(name, "listed in EXPECTED_ACTIONS but not in the template")
        for name in sorted(set(functions) - set(EXPECTED_SECRET_SCOPES)):
            self.fail(name, "function has no entry in EXPECTED_SECRET_SCOPES (check_template.py)")
        for name, fn in sorted(functions.items()):
            self.check_function_shape(name, fn)
            self.check_function_policy(name, fn)

    def check_function_shape(self, name, fn):
        props = fn["Properties"]
        build = fn.get("Metadata", {}).get("BuildMethod")
        if build != "rust-cargolambda":
            self.fail(name, f"Metadata.BuildMethod is {build!r}, expected 'rust-cargolambda'")
        if props.get("Runtime") != "provided.al2023":
            self.fail(name, f"Runtime is {props.get('Runtime')!r}, expected 'provided.al2023'")
        if props.get("Architectures") != ["arm64"]:
            self.fail(name, f"Architectures is {props.get('Architectures')!r}, expected ['arm64']")

        group = props.get("LoggingConfig", {}).get("LogGroup")
        target = group.get("Ref") if isinstance(group, dict) else None
        log = self.res.get(target, {})
        if log.get("Type") != "AWS::Logs::LogGroup":
            self.fail(name, "LoggingConfig.LogGroup must !Ref a log group of the stack")
        else:
            if "RetentionInDays" not in log.get("Properties", {}):
                self.fail(target, "log group has no RetentionInDays (logs would be kept forever)")
            fname = props.get("FunctionName", {})
            gname = log["Properties"].get("LogGroupName", {})
            if isinstance(fname, dict) and isinstance(gname, dict) and "Fn::Sub" in fname:
                if gname.get("Fn::Sub") != "/aws/lambda/" + fname["Fn::Sub"]:
                    self.fail(target, f"LogGroupName {show(gname)} is not /aws/lambda/<FunctionName>")

        env = props.get("Environment", {}).get("Variables", {})
        if env.get("BYOK_STORE") != "aws":
            self.fail(name, "BYOK_STORE must be 'aws'")
        if env.get("BYOK_SECRET_PREFIX") != {"Ref": "SecretPrefix"}:
            self.fail(name, "BYOK_SECRET_PREFIX must be !Ref SecretPrefix (the IAM scope uses it)")
        table = env.get("BYOK_TABLE_NAME")
        table = table.get("Ref") if isinstance(table, dict) else None
        if self.res.get(table, {}).get("Type") != "AWS::DynamoDB::Table":
            self.fail(name, "BYOK_TABLE_NAME must be !Ref of the stack's table")
        var, param = ROTATION_AGE_ENV
        if env.get(var) != {"Ref": param}:
            self.fail(name, f"{var} must be !Ref {param} (every function shows rotationDue; "
                      "the sweep flags with it)")

    def check_function_policy(self, name, fn):
        role_ref = fn["Properties"].get("Role")
        if not (isinstance(role_ref, dict) and self.getatt_arn_of(role_ref, "AWS::IAM::Role")):
            self.fail(name, f"Role {show(role_ref)} is not a role of this stack; cannot check it")
            return
        role = role_ref["Fn::GetAtt"][0] if isinstance(role_ref["Fn::GetAtt"], list) \
            else role_ref["Fn::GetAtt"].split(".")[0]

        actions = set()
        team_refs = set()
        scopes = set()
        invokes = set()
        buses = set()
        for where, doc in self.role_documents(role):
            for st, wrap in self.statements(doc):
                if st.get("Effect") != "Allow":
                    continue
                sid = f"{where} statement {st.get('Sid', '?')}"
                st_actions = {a for a in expand(st.get("Action", [])) if isinstance(a, str)}
                actions |= st_actions
                resources = expand(st.get("Resource", []))
                services = {a.split(":", 1)[0] for a in st_actions}
                if len(services) != 1:
                    self.fail(sid, f"mixes services {sorted(services)}; one service per statement")
                self.check_never_empty(sid, st, wrap)

                if "dynamodb" in services:
                    for r in resources:
                        if not self.getatt_arn_of(r, "AWS::DynamoDB::Table"):
                            self.fail(sid, f"DynamoDB resource {show(r)} is not the table's ARN")
                    if name in LEADING_KEYS and st_actions & DYNAMODB_WRITES:
                        cond = st.get("Condition", {}).get("ForAllValues:StringLike", {})
                        keys = set(as_list(cond.get("dynamodb:LeadingKeys", [])))
                        attrs = set(as_list(st.get("Condition", {})
                                            .get("ForAllValues:StringEquals", {})
                                            .get("dynamodb:Attributes", [])))
                        health = KEY_HEALTH_WRITES.get(name)
                        if keys == TOKEN_USE_KEYS:
                            if st_actions != {"dynamodb:UpdateItem"} or not attrs \
                                    or not attrs <= TOKEN_USE_ATTRIBUTES:
                                self.fail(sid, f"personal-key writes must be UpdateItem of only "
                                          f"{sorted(TOKEN_USE_ATTRIBUTES)}, found "
                                          f"{sorted(st_actions)} of {sorted(attrs)}")
                        elif keys == {"USER#*"} and health is not None:
                            if st_actions != {"dynamodb:UpdateItem"} or not attrs or not attrs <= health:
                                self.fail(sid, f"key-record writes must be UpdateItem of only "
                                          f"{sorted(health)} (ForAllValues:StringEquals "
                                          f"dynamodb:Attributes), found {sorted(st_actions)} "
                                          f"of {sorted(attrs)}")
                        elif keys != LEADING_KEYS[name]:
                            self.fail(sid, f"writes must be confined to the partitions "
                                      f"{sorted(LEADING_KEYS[name])} (ForAllValues:StringLike "
                                      f"dynamodb:LeadingKeys), found {sorted(keys)}")

                if "bedrock" in services:
                    rule = BEDROCK_TEAM_INVOKE
                    if name != rule["function"]:
                        self.fail(sid, "only the completion function may call Bedrock")
                    if wrap != rule["condition"]:
                        self.fail(sid, f"Bedrock statement must exist only under {rule['condition']}")
                    if not st_actions <= rule["actions"]:
                        self.fail(sid, f"Bedrock actions {sorted(st_actions)}: only {sorted(rule['actions'])}")
                    for r in resources:
                        text = r.get("Fn::Sub") if isinstance(r, dict) else r
                        if not (isinstance(text, str) and text.startswith("arn:${AWS::Partition}")
                                and text.endswith(rule["resources"])):
                            self.fail(sid, f"Bedrock resource {show(r)} is not a foundation model "
                                      "or inference profile ARN")
                unknown = services - {"dynamodb", "kms", "secretsmanager", "lambda", "events", "bedrock"}
                if unknown:
                    self.fail(sid, f"no resource rule for {sorted(unknown)} in check_template.py; "
                              "add one before granting it")

                if "lambda" in services:
                    if st_actions != {"lambda:InvokeFunction"}:
                        self.fail(sid, f"Lambda actions {sorted(st_actions)}: only InvokeFunction")
                    for r in resources:
                        if self.getatt_arn_of(r, "AWS::Lambda::Function"):
                            invokes.add(self.getatt_target(r))
                        else:
                            self.fail(sid, f"Lambda resource {show(r)} is not a function of the stack")

                if "events" in services:
                    if st_actions != {"events:PutEvents"}:
                        self.fail(sid, f"EventBridge actions {sorted(st_actions)}: only PutEvents")
                    for r in resources:
                        if self.getatt_arn_of(r, "AWS::Events::EventBus"):
                            buses.add(self.getatt_target(r))
                        else:
                            self.fail(sid, f"PutEvents resource {show(r)} is not an event bus of the stack")

                if "kms" in services:
                    for r in resources:
                        if not self.getatt_arn_of(r, "AWS::KMS::Key"):
                            self.fail(sid, f"KMS resource {show(r)} is not the stack's key")
                    via = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                    if not via:
                        self.fail(sid, "KMS statement without a StringEquals kms:ViaService condition")

                if "secretsmanager" in services:
                    writes = st_actions - SECRET_READS
                    if writes and name not in SECRET_WRITERS:
                        self.fail(sid, f"{name} may not write secrets: {sorted(writes)} "
                                  f"(only {sorted(SECRET_WRITERS)})")
                    st_team = set()
                    for r in resources:
                        param = r.get("Ref") if isinstance(r, dict) and set(r) == {"Ref"} else None
                        if param in TEAM_SECRET_PARAMS.values():
                            st_team.add(param)
                            scopes.add("team")
                        elif param == ALERT_SECRET_PARAM[1]:
                            scopes.add("alert")
                            if st_actions != {"secretsmanager:GetSecretValue"}:
                                self.fail(sid, "the alert webhook secret may only be read")
                        elif r == {"Fn::Sub": USER_SECRETS_ARN}:
                            scopes.add("user")
                        elif r == "*" and st_actions <= UNSCOPED_ACTIONS:
                            scopes.add("list")
                        elif r == "*":
                            self.fail(sid, f"Secrets Manager Resource \"*\" for "
                                      f"{sorted(st_actions - UNSCOPED_ACTIONS)}: only "
                                      f"{sorted(UNSCOPED_ACTIONS)} may be unscoped; scope the rest "
                                      f"to {USER_SECRETS_ARN}")
                        else:
                            self.fail(sid, f"Secrets Manager resource {show(r)} is neither "
                                      f"{USER_SECRETS_ARN} nor a team secret parameter")
                    team_refs |= st_team
                    if st_team and st_actions != {"secretsmanager:GetSecretValue"}:
                        self.fail(sid, f"team secrets may only be read (GetSecretValue), "
                                  f"not {sorted(st_actions)}")

        expected = EXPECTED_ACTIONS.get(name)
        if expected is not None and actions != expected:
            extra = sorted(actions - expected)
            missing = sorted(expected - actions)
            self.fail(name, "IAM actions differ from EXPECTED_ACTIONS"
                      + (f"; not expected: {extra}" if extra else "")
                      + (f"; missing: {missing}" if missing else ""))

        expected_scopes = EXPECTED_SECRET_SCOPES.get(name, set())
        if scopes != expected_scopes:
            self.fail(name, f"reaches secrets {sorted(scopes) or 'none'}, expected "
                      f"{sorted(expected_scopes) or 'none'} (EXPECTED_SECRET_SCOPES)")

        expected_invokes = EXPECTED_INVOKES.get(name, set())
        if invokes != expected_invokes:
            self.fail(name, f"may invoke {sorted(invokes) or 'no function'}, expected "
                      f"{sorted(expected_invokes) or 'none'} (EXPECTED_INVOKES)")

        env = fn["Properties"].get("Environment", {}).get("Variables", {})

        # Rotation starters: RotateSecret names the function in
        # BYOK_ROTATION_FUNCTION_ARN, and needs InvokeFunction on exactly it.
        rotation_arn = env.get(ROTATION_FUNCTION_ENV)
        if "secretsmanager:RotateSecret" in actions:
            if not self.getatt_arn_of(rotation_arn, "AWS::Lambda::Function"):
                self.fail(name, f"may RotateSecret but {ROTATION_FUNCTION_ENV} is "
                          f"{show(rotation_arn)}, not !GetAtt <function>.Arn")
            elif self.getatt_target(rotation_arn) != ROTATION_FUNCTION:
                self.fail(name, f"{ROTATION_FUNCTION_ENV} names {self.getatt_target(rotation_arn)}, "
                          f"expected {ROTATION_FUNCTION}")
            elif self.getatt_target(rotation_arn) not in invokes:
                self.fail(name, f"may RotateSecret but not lambda:InvokeFunction on "
                          f"{self.getatt_target(rotation_arn)} (RotateSecret needs it)")
        elif rotation_arn is not None:
            self.fail(name, f"has {ROTATION_FUNCTION_ENV} but no secretsmanager:RotateSecret")

        # Key events: the bus named in BYOK_EVENT_BUS_NAME is the one (and
        # only) bus it may put events on.
        bus = env.get(EVENT_BUS_ENV)
        bus = bus.get("Ref") if isinstance(bus, dict) and set(bus) == {"Ref"} else bus
        if name in EVENT_PUBLISHERS:
            if self.res.get(bus, {}).get("Type") != "AWS::Events::EventBus":
                self.fail(name, f"{EVENT_BUS_ENV} must be !Ref of the stack's event bus")
            elif buses != {bus}:
                self.fail(name, f"events:PutEvents on {sorted(buses) or 'nothing'}, expected "
                          f"exactly {EVENT_BUS_ENV}'s bus {bus}")
        elif bus is not None or buses:
            self.fail(name, f"publishes key events ({EVENT_BUS_ENV} or events:PutEvents) "
                      f"but is not in EVENT_PUBLISHERS {sorted(EVENT_PUBLISHERS)}")

        # Team secrets: a reader reads every BYOK_TEAM_*_SECRET_ARN it is
        # given at cold start, so variable and grant go together; a resolver
        # that does not read them holds the variables and no grant.
        given = {}
        for var, value in env.items():
            if var.startswith("BYOK_TEAM_") and var.endswith("_SECRET_ARN"):
                if var not in TEAM_SECRET_PARAMS:
                    self.fail(name, f"{var} is not a team secret variable the code reads")
                elif value != {"Ref": TEAM_SECRET_PARAMS[var]}:
                    self.fail(name, f"{var} must be !Ref {TEAM_SECRET_PARAMS[var]}")
                else:
                    given[var] = TEAM_SECRET_PARAMS[var]
        reads = name in TEAM_SECRET_READERS
        for var, param in sorted(given.items()):
            if reads and param not in team_refs:
                self.fail(name, f"has {var} but no GetSecretValue on {param}: it would fail at cold start")
        if not reads and team_refs:
            self.fail(name, f"may read team secrets {sorted(team_refs)} but never does")
        for param in sorted(team_refs - set(given.values())):
            self.fail(name, f"may read team secret {param} but is not given its variable")
        if name in TEAM_SECRET_RESOLVERS:
            for var in sorted(set(TEAM_SECRET_PARAMS) - set(given)):
                self.fail(name, f"resolves with team keys but lacks {var}")

        # The alert webhook's secret: variable and grant go together.
        alert_var, alert_param = ALERT_SECRET_PARAM
        has_var = env.get(alert_var) is not None
        if has_var and env.get(alert_var) != {"Ref": alert_param}:
            self.fail(name, f"{alert_var} must be !Ref {alert_param}")
        if has_var != ("alert" in scopes):
            self.fail(name, f"{alert_var} and GetSecretValue on {alert_param} go together")
        if has_var and name not in ALERT_SECRET_READERS:
            self.fail(name, f"{alert_var} is only for {sorted(ALERT_SECRET_READERS)}")

    def check_never_empty(self, sid, st, wrap):
        """A statement whose Resource entries are all conditional must itself
        be conditional on (an Or of) those conditions: never an empty list."""
        entries = as_list(st.get("Resource", []))
        if not entries:
            self.fail(sid, "has no Resource")
            return
        conds = set()
        for e in entries:
            if isinstance(e, dict) and set(e) == {"Fn::If"} and NO_VALUE in e["Fn::If"][1:]:
                conds.add(e["Fn::If"][0])
            else:
                return  # an unconditional entry: never empty
        if wrap is None or wrap.startswith("!"):
            self.fail(sid, f"every Resource is conditional ({sorted(conds)}) but the statement "
                      "is not: it would be empty when none is set")
            return
        members = self.or_members(wrap)
        implied = wrap in conds or (
            members is not None and len(members) > 1 and (members - {wrap}) <= conds
        )
        if not implied:
            self.fail(sid, f"is included under {wrap}, which does not imply one of "
                      f"its resource conditions {sorted(conds)}")

    # ------------------------------------------------------- front doors --

    def rest_methods(self):
        """(api, METHOD, path, operation, authorizer types) for every method
        of every REST API body."""
        out = []
        for api, res in sorted(self.of_type("AWS::ApiGateway::RestApi").items()):
            body = res["Properties"].get("Body", {})
            schemes = body.get("components", {}).get("securitySchemes", {})
            schemes = {**body.get("securityDefinitions", {}), **schemes}
            for path, item in body.get("paths", {}).items():
                for method, op in item.items():
                    if not isinstance(op, dict) or method.startswith("x-"):
                        continue
                    kinds = set()
                    for requirement in op.get("security", []):
                        for name in requirement:
                            auth = schemes.get(name, {}).get("x-amazon-apigateway-authorizer")
                            if auth:  # SAM writes `NONE: []` for Authorizer: NONE
                                kinds.add((auth.get("type"), show(auth.get("providerARNs"))))
                    out.append((api, method.upper(), path, op, kinds))
        return out

    def integration_target(self, integration):
        """The function an x-amazon-apigateway-integration invokes, and its
        Lambda API path (`2015-03-31/.../invocations` or
        `2021-11-15/.../response-streaming-invocations`)."""
        uri = integration.get("uri", {})
        text = uri.get("Fn::Sub") if isinstance(uri, dict) else uri
        if not isinstance(text, str):
            return None, None
        m = re.search(r"lambda:path/([0-9-]+)/functions/\$\{(\w+)\.Arn\}/([\w-]+)$", text)
        if not m:
            return None, None
        return m.group(2), f"{m.group(1)}/{m.group(3)}"

    def check_streaming_routes(self):
        """Streamed routes: on a REST API, streamed, authorized, consistent
        timeouts; on no HTTP API. Every REST API method is authorized."""
        functions = self.of_type("AWS::Lambda::Function")
        found = set()
        for api, method, path, op, kinds in self.rest_methods():
            where = f"{api} {method} {path}"
            integration = op.get("x-amazon-apigateway-integration", {})
            target, lambda_path = self.integration_target(integration)
            preflight = PREFLIGHT_ROUTES.get((method, path))
            if preflight is not None:
                if kinds:
                    self.fail(where, "a CORS preflight cannot carry a token: no authorizer")
                if target != preflight or integration.get("type") != "aws_proxy":
                    self.fail(where, f"preflight goes to {target!r}, expected a Lambda proxy to {preflight}")
                continue
            buffered = BUFFERED_REST_ROUTES.get((method, path))
            if buffered is not None:
                found.add((method, path))
                if kinds:
                    self.fail(where, f"authenticates in the function (personal API keys): no "
                              f"API Gateway authorizer, found {sorted(kinds)}")
                self.check_in_function_auth(buffered)
                if target != buffered or integration.get("type") != "aws_proxy":
                    self.fail(where, f"goes to {target!r}, expected a Lambda proxy to {buffered}")
                env = functions.get(buffered, {}).get("Properties", {}).get(
                    "Environment", {}).get("Variables", {})
                if env.get(IGNORE_STAGE_ENV) != "true":
                    self.fail(buffered, f"{IGNORE_STAGE_ENV} must be \"true\": the REST API stage "
                              f"would prefix {path} and the router would answer 404")
                continue
            expected = STREAMING_ROUTES.get((method, path))
            if expected is None:
                if not kinds:
                    self.fail(where, "REST API method without an authorizer")
                continue
            if kinds:
                self.fail(where, f"authenticates in the function (personal API keys): no "
                          f"API Gateway authorizer, found {sorted(kinds)}")
            self.check_in_function_auth(expected)
            found.add((method, path))
            if target != expected:
                self.fail(where, f"invokes {target!r}, expected {expected}")
            if integration.get("type") != "aws_proxy":
                self.fail(where, f"integration type {integration.get('type')!r}: "
                          "streaming needs a Lambda proxy integration (aws_proxy)")
            if integration.get("responseTransferMode") != "STREAM":
                self.fail(where, f"responseTransferMode is {integration.get('responseTransferMode')!r}, "
                          "expected 'STREAM' (ResponseTransferMode: RESPONSE_STREAM on the event)")
            if lambda_path != "2021-11-15/response-streaming-invocations":
                self.fail(where, f"integration calls Lambda {lambda_path!r}, expected "
                          "2021-11-15/.../response-streaming-invocations (InvokeWithResponseStream)")
            fn = functions.get(expected, {}).get("Properties", {})
            timeout_ms = integration.get("timeoutInMillis", 29_000)
            fn_timeout = fn.get("Timeout")
            if not isinstance(timeout_ms, int) or not 50 <= timeout_ms <= MAX_STREAM_TIMEOUT_MS:
                self.fail(where, f"integration timeout {timeout_ms!r} ms outside 50..{MAX_STREAM_TIMEOUT_MS}")
            elif isinstance(fn_timeout, int) and timeout_ms < fn_timeout * 1000:
                self.fail(where, f"integration timeout {timeout_ms} ms is shorter than {expected}'s "
                          f"Timeout {fn_timeout} s: API Gateway would cut streams the function may finish")
            env = fn.get("Environment", {}).get("Variables", {})
            if env.get(IGNORE_STAGE_ENV) != "true":
                self.fail(expected, f"{IGNORE_STAGE_ENV} must be \"true\": the REST API stage "
                          f"would prefix {path} and the router would answer 404")
            api_props = self.res[api]["Properties"]
            types = api_props.get("EndpointConfiguration", {}).get("Types")
            if types != ["REGIONAL"]:
                self.fail(api, f"endpoint {types!r}: streams need REGIONAL (5 min idle timeout; "
                          "edge-optimized cuts idle streams after 30 s)")
        for method, path in sorted(set(STREAMING_ROUTES) - found):
            self.fail(f"{method} {path}", "streamed route missing from every REST API")
        for method, path in sorted(set(BUFFERED_REST_ROUTES) - found):
            self.fail(f"{method} {path}", "/v1/* route missing from the REST API")

        # No HTTP API carries a streamed route or integrates its function.
        streamed_fns = set(STREAMING_ROUTES.values())
        for api, res in sorted(self.of_type("AWS::ApiGatewayV2::Api").items()):
            body = res["Properties"].get("Body", {})
            for path, item in body.get("paths", {}).items():
                for method, op in item.items():
                    if not isinstance(op, dict) or method.startswith("x-"):
                        continue
                    if (method.upper(), path) in STREAMING_ROUTES:
                        self.fail(api, f"HTTP API carries {method.upper()} {path}: HTTP APIs "
                                  "buffer responses; it belongs on the streaming REST API")
                    target, _ = self.integration_target(op.get("x-amazon-apigateway-integration", {}))
                    if target in streamed_fns:
                        self.fail(api, f"{method.upper()} {path} integrates {target}, a streaming function")
        for name, res in self.of_type("AWS::ApiGatewayV2::Integration").items():
            uri = res["Properties"].get("IntegrationUri")
            target, _ = self.integration_target({"uri": uri}) if uri else (None, None)
            if target in streamed_fns:
                self.fail(name, f"an HTTP API integration of {target}, a streaming function")

    def http_methods(self):
        """(api, METHOD, path, target function, authorizer types) for every
        route of every HTTP API body."""
        out = []
        for api, res in sorted(self.of_type("AWS::ApiGatewayV2::Api").items()):
            body = res["Properties"].get("Body", {})
            schemes = body.get("components", {}).get("securitySchemes", {})
            for path, item in body.get("paths", {}).items():
                for method, op in item.items():
                    if not isinstance(op, dict) or method.startswith("x-"):
                        continue
                    kinds = set()
                    for requirement in op.get("security", []):
                        for scheme in requirement:
                            auth = schemes.get(scheme, {}).get("x-amazon-apigateway-authorizer")
                            if auth:
                                kinds.add(auth.get("type"))
                    target, _ = self.integration_target(op.get("x-amazon-apigateway-integration", {}))
                    out.append((api, method.upper(), path, target, kinds))
        return out

    def check_in_function_auth(self, fn):
        """`fn` verifies callers itself: the issuer's JWKS, issuer and
        audiences, exactly those the HTTP API's authorizer trusts."""
        env = self.res.get(fn, {}).get("Properties", {}).get("Environment", {}).get("Variables", {})
        for var, value in IN_FUNCTION_AUTH_ENV.items():
            if env.get(var) != value:
                self.fail(fn, f"authenticates /v1/* callers itself: {var} must be {show(value)}, "
                          f"found {show(env.get(var))}")

    def check_http_routes(self):
        """Every HTTP API route is behind the JWT authorizer; HTTP_ROUTES are
        there and reach their function."""
        found = {}
        for api, method, path, target, kinds in self.http_methods():
            in_function = IN_FUNCTION_AUTH_HTTP_ROUTES.get((method, path))
            if in_function is not None:
                if target != in_function:
                    self.fail(f"{method} {path}", f"integrates {target!r}, expected {in_function}")
                if any(kinds):
                    self.fail(f"{api} {method} {path}", "authenticates in the function: no "
                              f"authorizer, found {sorted(k for k in kinds if k)}")
                self.check_in_function_auth(in_function)
            elif "jwt" not in kinds:
                self.fail(f"{api} {method} {path}", f"HTTP API route without the JWT authorizer "
                          f"(has {sorted(k for k in kinds if k) or 'none'})")
            found[(method, path)] = target
        for (method, path), expected in sorted(HTTP_ROUTES.items()):
            if (method, path) not in found:
                self.fail(f"{method} {path}", "route missing from the HTTP API")
            elif found[(method, path)] != expected:
                self.fail(f"{method} {path}", f"integrates {found[(method, path)]!r}, expected {expected}")

    def check_rotation(self):
        """Secrets Manager may invoke the rotation function (this account
        only) and nothing else; the sweep schedule targets it; key events
        flow bus -> rule (the four detail types) -> SNS topic that
        EventBridge may publish to."""
        fn = ROTATION_FUNCTION
        if self.res.get(fn, {}).get("Type") != "AWS::Lambda::Function":
            self.fail(fn, "rotation function missing from the template")
            return
        permissions = self.of_type("AWS::Lambda::Permission")

        # Secrets Manager -> rotation function.
        sm = {k: v["Properties"] for k, v in permissions.items()
              if v["Properties"].get("Principal") == "secretsmanager.amazonaws.com"}
        if not sm:
            self.fail(fn, "no AWS::Lambda::Permission lets secretsmanager.amazonaws.com invoke it "
                      "(RotateSecret would be refused)")
        for name, props in sorted(sm.items()):
            if not self.refers_to(props.get("FunctionName"), fn):
                self.fail(name, f"lets Secrets Manager invoke {show(props.get('FunctionName'))}, "
                          f"expected {fn}")
            if props.get("Action") != "lambda:InvokeFunction":
                self.fail(name, f"Action {props.get('Action')!r}, expected 'lambda:InvokeFunction'")
            if props.get("SourceAccount") != {"Ref": "AWS::AccountId"}:
                self.fail(name, f"SourceAccount {show(props.get('SourceAccount'))} is not "
                          "!Ref AWS::AccountId (any account's secrets could invoke it)")

        # The sweep: a schedule rule (default bus) targeting the function,
        # with the permission for that rule.
        schedules = {
            k: v["Properties"] for k, v in self.of_type("AWS::Events::Rule").items()
            if v["Properties"].get("ScheduleExpression") is not None
        }
        sweep = [
            k for k, p in schedules.items()
            if any(self.refers_to(t.get("Arn"), fn) for t in p.get("Targets", []))
        ]
        if not sweep:
            self.fail(fn, "no schedule rule targets it (the Schedule event of the sweep)")
        for rule in sweep:
            props = schedules[rule]
            if props.get("ScheduleExpression") != {"Ref": SWEEP_SCHEDULE_PARAM}:
                self.fail(rule, f"ScheduleExpression {show(props.get('ScheduleExpression'))} is not "
                          f"!Ref {SWEEP_SCHEDULE_PARAM}")
            if props.get("State", "ENABLED") != "ENABLED":
                self.fail(rule, f"sweep schedule is {props.get('State')!r}, expected ENABLED")
            allowed = [
                p for p in permissions.values()
                if p["Properties"].get("Principal") == "events.amazonaws.com"
                and self.refers_to(p["Properties"].get("FunctionName"), fn)
                and self.getatt_target(p["Properties"].get("SourceArn")) == rule
            ]
            if not allowed:
                self.fail(rule, f"no permission lets this rule (SourceArn) invoke {fn}")

        # Key events: bus -> rule -> topic.
        env = self.res[fn]["Properties"].get("Environment", {}).get("Variables", {})
        bus = env.get(EVENT_BUS_ENV, {})
        bus = bus.get("Ref") if isinstance(bus, dict) else None
        rules = {
            k: v["Properties"] for k, v in self.of_type("AWS::Events::Rule").items()
            if bus and v["Properties"].get("EventBusName") in ({"Ref": bus}, {"Fn::GetAtt": [bus, "Arn"]})
        }
        forwarding = {}
        for rule, props in sorted(rules.items()):
            pattern = props.get("EventPattern", {})
            if pattern.get("source") != [EVENT_SOURCE]:
                continue
            types = set(pattern.get("detail-type", []))
            if types != KEY_EVENT_TYPES:
                self.fail(rule, f"matches detail types {sorted(types)}, expected "
                          f"{sorted(KEY_EVENT_TYPES)}")
            topics = [
                t["Arn"]["Ref"] for t in props.get("Targets", [])
                if isinstance(t.get("Arn"), dict) and set(t["Arn"]) == {"Ref"}
                and self.res.get(t["Arn"]["Ref"], {}).get("Type") == "AWS::SNS::Topic"
            ]
            if not topics:
                self.fail(rule, "targets no SNS topic of the stack")
            if props.get("State", "ENABLED") != "ENABLED":
                self.fail(rule, f"key events rule is {props.get('State')!r}, expected ENABLED")
            for topic in topics:
                forwarding.setdefault(topic, set()).add(rule)
        if not forwarding:
            self.fail(fn, f"no rule on its bus ({EVENT_BUS_ENV}) matches source {EVENT_SOURCE!r} "
                      "and forwards to an SNS topic")
        for topic, topic_rules in sorted(forwarding.items()):
            self.check_events_topic(topic, topic_rules)

    def check_events_topic(self, topic, rules):
        """EventBridge (these rules only) may publish to the topic, and can
        use its encryption key."""
        policies = [
            p["Properties"] for p in self.of_type("AWS::SNS::TopicPolicy").values()
            if {"Ref": topic} in as_list(p["Properties"].get("Topics", []))
        ]
        allowed = set()
        for policy in policies:
            for st in as_list(policy.get("PolicyDocument", {}).get("Statement", [])):
                if st.get("Effect") != "Allow":
                    continue
                principal = st.get("Principal", {})
                if principal == "*" or (isinstance(principal, dict) and principal.get("AWS") == "*"):
                    self.fail(topic, f"topic policy statement {st.get('Sid')!r} allows everyone")
                if not (isinstance(principal, dict) and principal.get("Service") == "events.amazonaws.com"):
                    continue
                if set(as_list(st.get("Action", []))) != {"sns:Publish"}:
                    self.fail(topic, f"EventBridge may {as_list(st.get('Action'))}; only sns:Publish")
                if st.get("Resource") != {"Ref": topic}:
                    self.fail(topic, f"EventBridge statement's Resource {show(st.get('Resource'))} "
                              "is not the topic")
                cond = st.get("Condition", {})
                source = (cond.get("ArnEquals") or cond.get("ArnLike") or {}).get("aws:SourceArn")
                if source is None:
                    self.fail(topic, "EventBridge may publish without an aws:SourceArn condition "
                              "(any rule of any account)")
                for s in as_list(source or []):
                    if self.getatt_target(s) in rules:
                        allowed.add(self.getatt_target(s))
                    else:
                        self.fail(topic, f"EventBridge publish condition names {show(s)}, "
                                  f"not a rule forwarding key events ({sorted(rules)})")
        for rule in sorted(rules - allowed):
            self.fail(topic, f"no topic policy lets events.amazonaws.com publish for {rule} "
                      "(deliveries would fail)")
        key = self.res[topic]["Properties"].get("KmsMasterKeyId")
        if key is not None:
            if isinstance(key, str) and key.endswith("alias/aws/sns"):
                self.fail(topic, "encrypted with alias/aws/sns: EventBridge cannot use the "
                          "AWS-managed key (its policy cannot grant events.amazonaws.com)")
            target = key.get("Ref") if isinstance(key, dict) and "Ref" in key else self.getatt_target(key)
            if self.res.get(target, {}).get("Type") == "AWS::KMS::Key":
                statements = as_list(self.res[target]["Properties"].get("KeyPolicy", {}).get("Statement", []))
                if not any(isinstance(st.get("Principal"), dict)
                           and st["Principal"].get("Service") == "events.amazonaws.com"
                           for st in statements):
                    self.fail(topic, f"encrypted with {target}, whose key policy does not let "
                              "events.amazonaws.com use it (deliveries would fail)")

    def check_every_provider_has_a_team_secret(self):
        """Every provider module (shared/src/domain/provider/*.rs) names a
        team-secret variable that has its parameter here."""
        root = pathlib.Path(__file__).resolve().parents[2] / "shared/src/domain/provider"
        for source in sorted(root.glob("*.rs")):
            text = source.read_text()
            m = re.search(r'team_secret_env:\s*"([A-Z0-9_]+)"', text)
            if source.name == "mod.rs":
                continue
            if not m:
                self.fail(source.name, "provider module without team_secret_env")
            elif m.group(1) not in TEAM_SECRET_PARAMS:
                self.fail(source.name, f"{m.group(1)} has no template parameter in "
                          "TEAM_SECRET_PARAMS (check_template.py) and template.yaml")

    def run(self):
        self.check_no_wildcards()
        self.check_functions()
        self.check_streaming_routes()
        self.check_http_routes()
        self.check_rotation()
        self.check_every_provider_has_a_team_secret()
        return self.errors


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
    else:
        print("cfn-lint ok")

    # Run even when cfn-lint failed, so one run reports every problem.
    errors = Checker(output).run()
    if errors:
        print(f"policy/function assertions failed ({len(errors)}):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
    if lint.returncode != 0 or errors:
        return 1
    print(f"policy ok: {len(EXPECTED_ACTIONS)} functions match EXPECTED_ACTIONS, no wildcards "
          f"(Resource * only for {sorted(UNSCOPED_ACTIONS)}), "
          "Secrets Manager writes only where allowed, runtime/arch/build/log retention as required")
    print(f"front doors ok: {len(STREAMING_ROUTES)} streamed route(s) on the REST API "
          "(STREAM, InvokeWithResponseStream, authenticated in the function), none on the HTTP API; "
          f"every other HTTP API route JWT-authorized, {len(HTTP_ROUTES)} required route(s) present")
    print(f"rotation ok: Secrets Manager may invoke {ROTATION_FUNCTION} (this account), "
          f"sweep on !Ref {SWEEP_SCHEDULE_PARAM}, secret writes scoped to SecretPrefix "
          f"(only {sorted(UNSCOPED_ACTIONS)} on *), PutEvents on its bus only, "
          f"RotateSecret with InvokeFunction on {ROTATION_FUNCTION} only, "
          f"rule {EVENT_SOURCE} x {len(KEY_EVENT_TYPES)} detail types -> SNS topic EventBridge may publish to")
    return 0


if __name__ == "__main__":
    sys.exit(main())
