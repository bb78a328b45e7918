"""The IAM policy documented in docs/kms.md, evaluated with IAM's rules: it lets keysvc make every KMS call
its backend makes, and never lets the role adopt a signing key it did not create.

The finding it guards against: `kms:TagResource` allowed on `*` with conditions on the request's tags only,
so the role could tag any existing SIGN_VERIFY key `keysvc:prefix=<ours>` and then sign with it, disable
it or schedule its deletion. The evaluator below implements the parts of IAM's policy logic the document
uses (explicit Deny wins over Allow, no Allow means implicit deny, wildcard actions and resources,
StringEquals / StringNotEquals / StringLike / ForAllValues:StringLike, absent context keys as IAM treats
them); the docs also list what the IAM policy simulator should confirm on a real account.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

PREFIX = "alias/keysvc/prod"
OUR_KEY = "arn:aws:kms:REGION:ACCOUNT:key/1111"
FOREIGN_KEY = "arn:aws:kms:REGION:ACCOUNT:key/2222"
OURS = {"aws:ResourceTag/keysvc:prefix": PREFIX}
CREATE_TAGS = {"aws:RequestTag/keysvc:prefix": PREFIX, "aws:TagKeys": ["keysvc:prefix", "keysvc:keyset", "keysvc:seq"],
               "kms:KeyUsage": "SIGN_VERIFY"}


def documented_policy() -> dict[str, Any]:
    """The JSON block under 'Minimal IAM policy' in docs/kms.md."""
    text = (ROOT / "docs" / "kms.md").read_text()
    section = text[text.index("## Minimal IAM policy"):]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None, "docs/kms.md has no JSON policy under 'Minimal IAM policy'"
    policy: dict[str, Any] = json.loads(block.group(1))
    return policy


@dataclass(frozen=True)
class Request:
    """One authorisation request: action, resource ARN (or `*`) and the context keys it carries."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, Any]) -> bool:
    wanted_values = [str(v) for v in _listify(wanted)]
    if operator.startswith("ForAllValues:"):
        present = context.get(key)
        if present is None:  # no values: "all of them" holds vacuously, as in IAM
            return True
        inner = operator.removeprefix("ForAllValues:")
        return all(_condition_holds(inner, key, wanted, {key: v}) for v in _listify(present))
    if key not in context:
        return operator.startswith("StringNot")  # IAM: a negated operator on an absent key holds
    actual = str(context[key])
    if operator == "StringEquals":
        return actual in wanted_values
    if operator == "StringNotEquals":
        return actual not in wanted_values
    if operator == "StringLike":
        return any(fnmatch.fnmatchcase(actual, pattern) for pattern in wanted_values)
    raise AssertionError(f"the evaluator does not know condition operator {operator}")


def _matches(statement: Mapping[str, Any], request: Request) -> bool:
    actions = _listify(statement["Action"])
    resources = _listify(statement["Resource"])
    if not any(fnmatch.fnmatchcase(request.action, a) for a in actions):
        return False
    if not any(r == "*" or (request.resource != "*" and fnmatch.fnmatchcase(request.resource, r)) for r in resources):
        return False
    return all(
        _condition_holds(operator, key, wanted, request.context)
        for operator, pairs in statement.get("Condition", {}).items()
        for key, wanted in pairs.items()
    )


def decide(policy: Mapping[str, Any], request: Request) -> str:
    """allowed | explicitDeny | implicitDeny, as the IAM policy simulator names them."""
    matching = [s for s in policy["Statement"] if _matches(s, request)]
    if any(s["Effect"] == "Deny" for s in matching):
        return "explicitDeny"
    return "allowed" if any(s["Effect"] == "Allow" for s in matching) else "implicitDeny"


CASES = [
    # what keysvc itself does
    ("create a tagged signing key", Request("kms:CreateKey", "*", CREATE_TAGS), "allowed"),
    ("the tags given at CreateKey", Request("kms:TagResource", "*", CREATE_TAGS), "allowed"),
    ("update the record of our key", Request("kms:TagResource", OUR_KEY,
                                              {**OURS, "aws:RequestTag/keysvc:activates_at": "1",
                                               "aws:TagKeys": ["keysvc:activates_at"]}), "allowed"),
    ("sign with our key", Request("kms:Sign", OUR_KEY, OURS), "allowed"),
    ("read our public key", Request("kms:GetPublicKey", OUR_KEY, OURS), "allowed"),
    ("describe our key", Request("kms:DescribeKey", OUR_KEY, OURS), "allowed"),
    ("list our key's tags", Request("kms:ListResourceTags", OUR_KEY, OURS), "allowed"),
    ("revoke our key", Request("kms:DisableKey", OUR_KEY, OURS), "allowed"),
    ("retire our key", Request("kms:ScheduleKeyDeletion", OUR_KEY, OURS), "allowed"),
    ("claim a slot (alias side)", Request("kms:CreateAlias", f"arn:aws:kms:REGION:ACCOUNT:{PREFIX}/zapier/7"),
     "allowed"),
    ("claim a slot (key side)", Request("kms:CreateAlias", OUR_KEY, OURS), "allowed"),
    ("list aliases", Request("kms:ListAliases", "*"), "allowed"),
    ("list keys (repair)", Request("kms:ListKeys", "*"), "allowed"),
    # what an attacker holding the role would try
    ("adopt a foreign key by tagging it ours", Request("kms:TagResource", FOREIGN_KEY,
                                                        {"aws:RequestTag/keysvc:prefix": PREFIX,
                                                         "aws:TagKeys": ["keysvc:prefix"]}), "explicitDeny"),
    ("retag another deployment's key", Request("kms:TagResource", FOREIGN_KEY,
                                                {"aws:ResourceTag/keysvc:prefix": "alias/keysvc/staging",
                                                 "aws:RequestTag/keysvc:prefix": PREFIX,
                                                 "aws:TagKeys": ["keysvc:prefix"]}), "explicitDeny"),
    ("untag a foreign key", Request("kms:UntagResource", FOREIGN_KEY, {"aws:TagKeys": ["keysvc:prefix"]}),
     "explicitDeny"),
    ("sign with a foreign key", Request("kms:Sign", FOREIGN_KEY), "implicitDeny"),
    ("disable a foreign key", Request("kms:DisableKey", FOREIGN_KEY), "implicitDeny"),
    ("delete a foreign key", Request("kms:ScheduleKeyDeletion", FOREIGN_KEY), "implicitDeny"),
    ("point our slot at a foreign key", Request("kms:CreateAlias", FOREIGN_KEY), "implicitDeny"),
    ("an alias outside our prefix", Request("kms:CreateAlias", "arn:aws:kms:REGION:ACCOUNT:alias/other/1"),
     "implicitDeny"),
    ("create an untagged key", Request("kms:CreateKey", "*", {"kms:KeyUsage": "SIGN_VERIFY"}), "implicitDeny"),
    ("create a key with a foreign tag", Request("kms:CreateKey", "*", {**CREATE_TAGS,
                                                                       "aws:TagKeys": ["keysvc:prefix", "owner"]}),
     "implicitDeny"),
    ("create an encryption key", Request("kms:CreateKey", "*", {**CREATE_TAGS, "kms:KeyUsage": "ENCRYPT_DECRYPT"}),
     "explicitDeny"),
    ("decrypt", Request("kms:Decrypt", OUR_KEY, OURS), "implicitDeny"),
    ("change a key policy", Request("kms:PutKeyPolicy", OUR_KEY, OURS), "implicitDeny"),
    ("cancel a deletion", Request("kms:CancelKeyDeletion", OUR_KEY, OURS), "implicitDeny"),
]


@pytest.mark.parametrize(("request_", "expected"), [(r, e) for _, r, e in CASES], ids=[c[0] for c in CASES])
def test_documented_policy_decides_each_request(request_: Request, expected: str) -> None:
    """Each request keysvc makes is allowed; each adoption, foreign use or extra privilege is denied."""
    assert decide(documented_policy(), request_) == expected


def test_no_allow_grants_tagging_an_existing_key_without_a_deny_guarding_it() -> None:
    """Every Allow that grants kms:TagResource on a key ARN pattern (or `*`) is matched, for an existing key
    without our tag, by an explicit Deny: the role can never tag its way into a key it did not create."""
    policy = documented_policy()
    probe = Request("kms:TagResource", FOREIGN_KEY, {"aws:RequestTag/keysvc:prefix": PREFIX,
                                                     "aws:TagKeys": ["keysvc:prefix"]})
    granting = [s for s in policy["Statement"] if s["Effect"] == "Allow" and _matches(s, probe)]
    assert granting, "sanity: the request tags alone would satisfy an Allow (the original finding)"
    assert decide(policy, probe) == "explicitDeny"


def test_every_kms_call_of_the_backend_is_covered() -> None:
    """The backend's boto3 calls (create_key, sign, tag_resource, paginators, ...) are all granted for our own
    keys: a new call in keysvc/backends/kms.py without a policy change fails here."""
    source = (ROOT / "keysvc" / "backends" / "kms.py").read_text()
    calls = set(re.findall(r"_client\.([a-z_]+)\(", source)) - {"close", "get_paginator"}
    calls |= set(re.findall(r'get_paginator\("([a-z_]+)"\)', source))
    policy = documented_policy()
    for call in sorted(calls):
        action = "kms:" + "".join(part.title() for part in call.split("_"))
        request = Request(action, "*", CREATE_TAGS) if action == "kms:CreateKey" else Request(action, OUR_KEY, OURS)
        if action in ("kms:ListAliases", "kms:ListKeys"):
            request = Request(action, "*")
        assert decide(policy, request) == "allowed", f"{call} ({action}) is not allowed by docs/kms.md's policy"
