"""Path patterns, rules, and a client's rules compiled (RuleSet), as tables."""

from __future__ import annotations

import re

import pytest

from proxy.inbound.rules import PathPattern, Rule, RuleSet


def rule(methods: str, *paths: str) -> Rule:
    return Rule(frozenset(methods.split()), tuple(PathPattern.parse(p) for p in paths))


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/companies/*/employees*", "/api/companies/7/employees", True),
        ("/api/companies/*/employees*", "/api/companies/7/employeesX", True),
        ("/api/companies/*/employees*", "/api/companies/7/employees/3", False),
        ("/api/companies/*/employees*", "/api/companies/7/8/employees", False),
        ("/api/companies/*/employees*", "/api/companies//employees", True),  # '*' may be empty
        ("/api/companies/*/employees*", "/api/companies/7/hourcodes", False),
        ("/api/companies", "/api/companies", True),
        ("/api/companies", "/api/companies/", False),
        ("/api/companies", "/api/Companies", False),  # case matters
        ("/api/**", "/api", True),
        ("/api/**", "/api/", True),
        ("/api/**", "/api/a/b/c", True),
        ("/api/**", "/apix", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/api/**/info", "/api/info", True),
        ("/api/**/info", "/api/employees/1/info", True),
        ("/api/**/info", "/api/employees/1/infos", False),
        ("/a.b/c+d", "/a.b/c+d", True),  # regex characters are literal
        ("/a.b/c+d", "/aXb/c+d", False),
        ("/api/*", "/api/x\n", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    assert PathPattern.parse(pattern).matches(path) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("api/x", "must start with '/'"),
        ("/api/x?y=1", "must not contain '?', '#', '%', '\\' or whitespace"),
        ("/api/%2F", "must not contain '?', '#', '%', '\\' or whitespace"),
        ("/api/ x", "must not contain '?', '#', '%', '\\' or whitespace"),
        ("/api/a**", "'**' must be a whole segment ('/**/')"),
    ],
)
def test_bad_path_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        PathPattern.parse(pattern)


@pytest.mark.parametrize(
    ("methods", "method", "allowed"),
    [
        ("GET", "GET", True),
        ("GET", "HEAD", True),  # GET implies HEAD
        ("GET", "POST", False),
        ("HEAD", "GET", False),
        ("GET PUT", "PUT", True),
        ("*", "DELETE", True),
    ],
)
def test_rule_methods(methods: str, method: str, allowed: bool) -> None:
    assert rule(methods, "/x").allows(method, "/x") is allowed


RULES = (
    rule("GET", "/api/companies/*/employees*", "/api/debtors"),
    rule("POST PUT", "/upload", "/api/companies/*/employees"),
    rule("*", "/open/**"),
    rule("DELETE", "/a.b/**/c+d"),
)


@pytest.mark.parametrize("rules", [RULES, RULES[:1], RULES[2:], ()])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "PROPFIND"])
@pytest.mark.parametrize("path", [
    "/api/companies/7/employees", "/api/companies/7/employees/3", "/api/debtors",
    "/api/debtorsX", "/upload", "/upload/x", "/open", "/open/a/b", "/opener",
    "/a.b/x/y/c+d", "/aXb/c+d", "/", "",
])
def test_a_rule_set_allows_what_one_of_its_rules_allows(
    rules: tuple[Rule, ...], method: str, path: str
) -> None:
    compiled = RuleSet(rules)
    expected = any(r.allows(method, path) for r in rules)
    assert compiled.allows(method, path) is expected
    assert compiled.allows(method, path) is expected  # the joined pattern, kept


def test_methods_past_the_kept_ones_are_still_decided() -> None:
    compiled = RuleSet((rule("*", "/x"), rule("GET", "/g")))
    for number in range(100):
        assert compiled.allows(f"M{number}", "/x")
        assert not compiled.allows(f"M{number}", "/g")
    assert compiled.allows("GET", "/g")
