"""The proxy's decisions and credential swaps, and the surrogates behind them."""

from __future__ import annotations

import base64
import json
import re

import pytest

from airut_core.sandbox import (
    Allowlist,
    AllowlistError,
    Mask,
    PolicyRecord,
    UrlPrefix,
    parse_allowlist,
    subnet,
)
from airut_core.spool import Stage
from airut_proxy import rules
from airut_proxy.policies import PolicyStore
from airut_runner import surrogates

ALLOW = parse_allowlist("""
domains: [allowed.test, "*.wild.test"]
url_prefixes:
  - {host: api.example.com, path: "/v1/messages*", methods: [post]}
  - {host: paths.test, path: "/open/*"}
  - {host: "*", path: "/public/*", methods: [GET, HEAD]}
""", "allowlist")


@pytest.mark.parametrize(("method", "host", "path", "allowed", "reason"), [
    ("GET", "allowed.test", "/anything?x=1", True, "allowed"),
    ("DELETE", "ALLOWED.TEST", "/", True, "allowed"),  # hosts ignore case
    ("GET", "allowed.test.", "/", True, "allowed"),  # a trailing dot is the same name
    ("GET", "sub.allowed.test", "/", False, "path"),  # domains are exact ("*" matched)
    ("GET", "a.wild.test", "/", True, "allowed"),
    ("GET", "a.b.wild.test", "/", True, "allowed"),
    ("GET", "wild.test", "/", False, "path"),  # *.x does not match x
    ("POST", "api.example.com", "/v1/messages?beta=true", True, "allowed"),
    ("GET", "api.example.com", "/v1/messages", False, "method"),
    ("POST", "api.example.com", "/v2/messages", False, "path"),
    ("PUT", "paths.test", "/open/a/b", True, "allowed"),  # no methods: any
    ("GET", "paths.test", "/opened", False, "path"),
    ("GET", "paths.test", "/open%2fa", True, "allowed"),  # decoded before matching
    ("GET", "paths.test", "/%6fpen/a", True, "allowed"),
    ("GET", "paths.test", "/open/%2e%2e/closed", False, "bad_path: '..' segment in path"),
    ("GET", "paths.test", "/open/..%2fclosed", False, "bad_path: '..' segment in path"),
    ("GET", "paths.test", "/open/a%00b", False, "bad_path: null byte in path"),
    ("GET", "paths.test", "/open/a%5cb", False, "bad_path: backslash in path"),
    ("GET", "paths.test", "/open\\a", False, "bad_path: backslash in path"),
    ("GET", "paths.test", "/open/%ff", False, "bad_path: path is not UTF-8 after decoding"),
    ("GET", "anywhere.test", "/public/x", True, "allowed"),  # host "*": read-only web
    ("POST", "anywhere.test", "/public/x", False, "method"),
])
def test_decisions(method, host, path, allowed, reason):
    decision = rules.decide(ALLOW, method, host, path)
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_globs_are_only_star_and_question_mark():
    assert rules.glob_match("a?c", "abc") and not rules.glob_match("a?c", "ac")
    assert not rules.glob_match("[ab]", "a") and rules.glob_match("[ab]", "[ab]")
    assert not rules.glob_match("a.c", "abc")


def test_empty_and_broken_allowlists():
    assert parse_allowlist("", "f") == Allowlist()
    assert not rules.decide(Allowlist(), "GET", "x", "/").allowed
    with pytest.raises(AllowlistError, match=r"f: url_prefixes\[0\]\.path: expected a string"):
        parse_allowlist("url_prefixes: [{host: x, path: [1]}]", "f")
    with pytest.raises(AllowlistError, match="f: unknown key domain"):
        parse_allowlist("domain: [x]", "f")
    with pytest.raises(AllowlistError, match="not valid YAML"):
        parse_allowlist("domains: [", "f")
    with pytest.raises(AllowlistError, match="host: must not be empty"):
        parse_allowlist("url_prefixes: [{host: ''}]", "f")


GH = Mask(env="GH_TOKEN", surrogate="ghp_SURROGATE", value="ghp_REAL", scopes=["*.github.com",
                                                                               "github.com"],
          headers=["Authorization"])
KEY = Mask(env="KEY", surrogate="sk-SURR", value="sk-REAL", scopes=["api.example.com"],
           headers=["x-api-*"])


def test_surrogates_become_real_only_on_scoped_hosts_and_headers():
    headers = [("Authorization", "Bearer ghp_SURROGATE"), ("X-Other", "ghp_SURROGATE")]
    out, changes = rules.apply_masks([GH, KEY], "api.github.com", headers)
    assert out == [("Authorization", "Bearer ghp_REAL"), ("X-Other", "ghp_SURROGATE")]
    assert [(c.name, c.action) for c in changes] == [("Authorization", "swapped")]
    out, changes = rules.apply_masks([GH, KEY], "evil.test", headers)
    assert out == headers and changes == []


def test_basic_auth_is_swapped_inside_the_encoding():
    basic = "Basic " + base64.b64encode(b"x-access-token:ghp_SURROGATE").decode()
    out, _ = rules.apply_masks([GH], "github.com", [("authorization", basic)])
    assert base64.b64decode(out[0][1].split()[1]) == b"x-access-token:ghp_REAL"


def test_foreign_credentials_are_stripped_on_scoped_hosts():
    headers = [("Authorization", "Bearer my-own-token"), ("Accept", "*/*"),
               ("X-Api-Key", "sk-SURR")]
    out, changes = rules.apply_masks([GH, KEY], "api.github.com", headers)
    assert out == [("Accept", "*/*"), ("X-Api-Key", "sk-SURR")]
    assert [(c.name, c.action) for c in changes] == [("Authorization", "stripped")]
    tolerant = Mask(**{**GH.__dict__, "allow_foreign": True})
    out, changes = rules.apply_masks([tolerant], "api.github.com", headers)
    assert out == headers and changes == []


def test_duplicate_credential_headers_are_each_checked():
    headers = [("Authorization", "Bearer ghp_SURROGATE"), ("Authorization", "Bearer other")]
    out, changes = rules.apply_masks([GH], "github.com", headers)
    assert out == [("Authorization", "Bearer ghp_REAL")]
    assert [c.action for c in changes] == ["swapped", "stripped"]


@pytest.mark.parametrize("real", [
    "sk-ant-api03-Abc_def-123XYZ", "ghp_0123456789abcdefABCDEF0123456789abcd",
    "github_pat_11AAAA_bbbb", "xoxb-1234-5678-abcdEFGH", "plainsecret", "AKIAIOSFODNN7EXAMPLE"])
def test_surrogates_keep_the_shape(real):
    made = {surrogates.surrogate(real) for _ in range(20)}
    assert real not in made and len(made) > 1  # fresh every time
    for fake in made:
        assert len(fake) == len(real)
        prefix = next((p for p in surrogates.PREFIXES if real.startswith(p)), "")
        assert fake.startswith(prefix)
        for a, b in zip(real[len(prefix):], fake[len(prefix):], strict=True):
            assert (a.islower(), a.isupper(), a.isdigit()) == (b.islower(), b.isupper(),
                                                                b.isdigit())
            if not a.isalnum():
                assert a == b


def test_a_secret_without_letters_or_digits_cannot_be_masked():
    with pytest.raises(ValueError, match="letters or digits"):
        surrogates.surrogate("ghp_----")


def policy(n: int, task: str = "t1") -> PolicyRecord:
    return PolicyRecord(task_id=task, conversation_id="0a1b2c3d", repo="demo",
                        subnet=subnet(n), network_log="/dev/null",
                        allowlist=Allowlist(url_prefixes=[UrlPrefix(host="x")]),
                        masks=[GH])


def test_policies_round_trip_and_name_their_gateway():
    p = policy(7)
    assert p.subnet == "10.199.7.0/24" and p.gateway == "10.199.7.1"
    assert PolicyRecord.from_dict(p.to_dict()) == p


def test_policy_store_finds_clients_by_address_and_rescans_on_a_miss(tmp_path):
    stage = Stage(tmp_path).ensure()
    store = PolicyStore(tmp_path)
    store.load()
    assert store.lookup("10.199.7.2") is None
    stage.put("t1", policy(7).to_dict())  # no reload: the miss rescans
    assert store.lookup("10.199.7.2").task_id == "t1"
    assert store.lookup("::ffff:10.199.7.9").task_id == "t1"
    assert store.lookup("10.199.8.2") is None
    assert store.lookup("not an address") is None
    stage.remove("t1")
    store.load()
    assert store.lookup("10.199.7.2") is None
    (tmp_path / "bad.json").write_text("{")
    store.load()  # an unreadable policy is skipped, not fatal
    assert len(store) == 0


def test_subnets_stay_in_the_pool():
    assert re.fullmatch(r"10\.199\.255\.0/24", subnet(255))


def test_reason_is_host_when_no_entry_names_the_host():
    narrow = parse_allowlist("domains: [a.test]\nurl_prefixes: [{host: b.test, path: /x}]", "f")
    assert rules.decide(narrow, "GET", "sub.a.test", "/").reason == "host"
    assert rules.decide(narrow, "GET", "b.test", "/y").reason == "path"


def test_proxy_settings_name_networks():
    from airut_core.config import ConfigError, parse
    cfg = parse("proxy: {allowed_private_networks: [127.0.0.1, 10.1.0.0/16], "
                "network_log_max_bytes: 1M}", "f")
    assert cfg.proxy.allowed_private_networks == ["127.0.0.1/32", "10.1.0.0/16"]
    assert cfg.proxy.network_log_max_bytes == 1 << 20
    with pytest.raises(ConfigError, match=r"allowed_private_networks\[0\]: not a network"):
        parse("proxy: {allowed_private_networks: [intranet]}", "f")


def _nft(*chains: tuple[str, str, int]) -> str:
    items = [{"metainfo": {"version": "1.0.6"}},
             {"table": {"family": "inet", "name": "airut", "handle": 1}}]
    for name, hook, rules_in_chain in chains:
        items.append({"chain": {"family": "inet", "table": "airut", "name": name,
                                "type": "filter", "hook": hook, "prio": -10}})
        items += [{"rule": {"family": "inet", "table": "airut", "chain": name}}] * rules_in_chain
    return json.dumps({"nftables": items})


def test_the_firewall_check_wants_every_chain_with_rules():
    from airut_runner.sandbox import firewall_problem
    full = [("prerouting", "prerouting", 3), ("input", "input", 7), ("forward", "forward", 2)]
    assert firewall_problem(_nft(*full)) is None
    assert firewall_problem(_nft(*full[:2])) == "its forward chain is missing"
    assert firewall_problem(_nft(full[0], ("input", "input", 0), full[2])) == (
        "its input chain is empty")
    assert firewall_problem(_nft()) == "its prerouting chain is missing"  # an empty table
    assert firewall_problem("nft: garbage") == "its table cannot be read"
