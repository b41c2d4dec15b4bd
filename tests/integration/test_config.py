"""The command line: -t (config check with JSON-path errors), -V, -c with a
bad file; and the documented example configuration."""

import json
import os
import re

from harness import arr_lb_rule, farm, make_config, server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _valid():
    cfg = make_config(farms=[farm("web", [server(8081, weight=100, hostName="app.internal")])],
                      rules=[arr_lb_rule("web", "www.example.com")])
    cfg["listeners"] = [{"address": "127.0.0.1", "port": 8080}]
    return cfg


def _check(env, name, cfg):
    if isinstance(cfg, (dict, list)):
        path = env.write_json(name + ".json", cfg)
    else:
        path = env.write_text(name + ".json", cfg)
    return env.cli("-t", "-c", path)


def test_check_valid_config(env):
    cfg = _valid()
    cfg["limits"] = {"maxRequestLineLength": 4096, "maxRequestHeadersSize": 8192, "maxRequestHeaders": 50,
                     "maxConnections": 100, "maxResponseHeaderSize": 32768}
    cfg["timeouts"] = {"connect": 5, "requestHeader": "00:00:10", "keepAlive": "0.00:01:00",
                       "requestBody": "00:01:00.500", "upstreamIdle": "00:00:30"}
    cfg["webFarms"][0].update({
        "enabled": True,
        "loadBalancing": {"algorithm": "RequestHash", "hashServerVariable": "REMOTE_ADDR"},
        "affinity": {"useCookie": True, "cookieName": "Sticky", "timeout": "00:20:00"},
        "protocol": {"timeout": "00:00:30", "keepAlive": True, "preserveHostHeader": False,
                     "reverseRewriteHostInResponseHeaders": True, "xForwardedForHeaderName": "",
                     "includePortInXForwardedFor": False, "arrResponseHeader": False}})
    cfg["rules"].append({"name": "redir", "patternSyntax": "ECMAScript", "match": {"url": "^old/(.*)$"},
                         "conditions": {"logicalGrouping": "MatchAny", "add": [
                             {"input": "{HTTP_HOST}", "pattern": "^a\\.example$"},
                             {"input": "{QUERY_STRING}", "pattern": "x=1", "negate": True}]},
                         "action": {"type": "Redirect", "url": "http://{HTTP_HOST}/new/{R:1}",
                                    "redirectType": "Found"}})
    p = _check(env, "valid", cfg)
    assert p.returncode == 0, "-t on a valid config must exit 0, got %d: %s" % (p.returncode, p.output)
    assert "configuration OK" in p.output, "-t must print 'configuration OK': %r" % p.output


def test_documented_example_config_is_valid(env):
    with open(os.path.join(ROOT, "docs", "config-format.md")) as f:
        md = f.read()
    m = re.search(r"```json\n(.*?)```", md, re.S)
    assert m, "no ```json example in docs/config-format.md"
    example = json.loads(m.group(1))
    p = _check(env, "doc-example", example)
    assert p.returncode == 0 and "configuration OK" in p.output, \
        "the example in docs/config-format.md must pass -t: %s" % p.output


BROKEN = [
    # (description, mutation of a valid config, JSON path expected in the message)
    ("negative weight", lambda c: c["webFarms"][0]["servers"][0].update(weight=-1),
     "$.webFarms[0].servers[0].weight"),
    ("weight not a number", lambda c: c["webFarms"][0]["servers"][0].update(weight="heavy"),
     "$.webFarms[0].servers[0].weight"),
    ("weight too big", lambda c: c["webFarms"][0]["servers"][0].update(weight=10 ** 9),
     "$.webFarms[0].servers[0].weight"),
    ("unknown top-level field", lambda c: c.update(bogus=1), "$.bogus"),
    ("unknown farm field", lambda c: c["webFarms"][0].update(colour="red"), "$.webFarms[0].colour"),
    ("port out of range", lambda c: c["listeners"][0].update(port=70000), "$.listeners[0].port"),
    ("port missing", lambda c: c["listeners"][0].pop("port"), "$.listeners[0]"),
    ("no listeners", lambda c: c.update(listeners=[]), "$.listeners"),
    ("server address missing", lambda c: c["webFarms"][0]["servers"][0].pop("address"),
     "$.webFarms[0].servers[0]"),
    ("bad algorithm", lambda c: c["webFarms"][0].update(loadBalancing={"algorithm": "Random"}),
     "$.webFarms[0].loadBalancing.algorithm"),
    ("bad duration", lambda c: c.update(timeouts={"connect": "1:xx"}), "$.timeouts.connect"),
    ("limit too small", lambda c: c.update(limits={"maxRequestLineLength": 10}),
     "$.limits.maxRequestLineLength"),
    ("duplicate farm name (case-insensitive)",
     lambda c: c["webFarms"].append({"name": "WEB", "servers": [server(8082)]}), "$.webFarms[1].name"),
    ("bool as string", lambda c: c["webFarms"][0].update(enabled="yes"), "$.webFarms[0].enabled"),
    ("bad action type", lambda c: c["rules"][0]["action"].update(type="Teleport"), "$.rules[0].action.type"),
    ("unknown server variable", lambda c: c["rules"][0]["action"].update(url="http://web/{NO_SUCH_VAR}"),
     "$.rules[0].action.url"),
    ("bad redirectType", lambda c: c["rules"][0]["action"].update(type="Redirect", redirectType="Sometimes"),
     "$.rules[0].action.redirectType"),
    ("invalid ECMAScript pattern",
     lambda c: c["rules"][0].update(patternSyntax="ECMAScript", match={"url": "^(unclosed"}),
     "$.rules[0].match.url"),
    ("duplicate rule name", lambda c: c["rules"].append(dict(c["rules"][0])), "$.rules[1].name"),
    ("bad xForwardedForHeaderName type",
     lambda c: c["webFarms"][0].update(protocol={"xForwardedForHeaderName": 5}),
     "$.webFarms[0].protocol.xForwardedForHeaderName"),
    ("bad condition grouping",
     lambda c: c["rules"][0].update(conditions={"logicalGrouping": "MatchSome", "add": []}),
     "$.rules[0].conditions.logicalGrouping"),
]


def test_check_broken_configs_name_json_path(env):
    problems = []
    for i, (desc, mutate, jpath) in enumerate(BROKEN):
        cfg = _valid()
        mutate(cfg)
        p = _check(env, "broken-%02d" % i, cfg)
        if p.returncode != 1:
            problems.append("%s: exit %d (expected 1): %s" % (desc, p.returncode, p.output.strip()[:200]))
        elif jpath not in p.output:
            problems.append("%s: message lacks %r: %s" % (desc, jpath, p.output.strip()[:200]))
        elif "configuration OK" in p.output:
            problems.append("%s: printed 'configuration OK'" % desc)
    assert not problems, "%d of %d broken configs mishandled by -t:\n  %s" % (
        len(problems), len(BROKEN), "\n  ".join(problems))


def test_check_not_json(env):
    for i, text in enumerate(("", "{", "[1,2,3]", '{"listeners": [{"port": 8080}],}', "\x00\xff")):
        p = _check(env, "notjson-%d" % i, text)
        assert p.returncode == 1, "-t on %r must exit 1, got %d: %s" % (text, p.returncode, p.output)
        assert p.output.strip(), "-t on %r printed no error" % text
        assert "configuration OK" not in p.output


def test_check_missing_file(env):
    p = env.cli("-t", "-c", env.path("does-not-exist.json"))
    assert p.returncode == 1, "missing config file: exit %d: %s" % (p.returncode, p.output)
    assert "does-not-exist.json" in p.output, "the error should name the file: %r" % p.output


def test_start_with_bad_config_fails(env):
    cfg = _valid()
    cfg["webFarms"][0]["servers"][0]["weight"] = -1
    path = env.write_json("bad-start.json", cfg)
    p = env.cli("-c", path, timeout=10)
    assert p.returncode != 0, "farmgated must refuse to start with a bad config: %s" % p.output
    assert "$.webFarms[0].servers[0].weight" in p.output, p.output


def test_version_and_build_options(env):
    p = env.cli("-V")
    assert p.returncode == 0, "-V exit %d: %s" % (p.returncode, p.output)
    lines = p.stdout.splitlines() or p.output.splitlines()
    assert lines and re.match(r"^farmgated \S+", lines[0]), "first line must be 'farmgated <version>': %r" % lines[:1]
    opts = {}
    for l in p.output.splitlines():
        m = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", l.strip())
        if m:
            opts[m.group(1)] = m.group(2).strip().strip('"')
    autoconf = os.path.join(env.build, "include", "generated", "autoconf.h")
    assert os.path.exists(autoconf), autoconf
    want = {}
    with open(autoconf) as f:
        for l in f:
            m = re.match(r"#define (CONFIG_[A-Z0-9_]+) (.*)$", l.strip())
            if m:
                want[m.group(1)] = m.group(2).strip().strip('"')
    assert want, "no options in " + autoconf
    problems = []
    for k, v in want.items():
        if k not in opts:
            problems.append("%s missing" % k)
        elif v == "1" and opts[k] in ("y", "1"):
            continue
        elif opts[k] != v:
            problems.append("%s=%s (build has %s)" % (k, opts[k], v))
    assert not problems, "-V build options disagree with %s: %s\n%s" % (autoconf, problems, p.output)
