"""The command line: -t (config check with JSON-path errors), -V, -c with a
bad file; and the documented example configuration."""

import json
import os
import re
import subprocess

from harness import arr_lb_rule, farm, http_request, make_config, one_farm_config, server

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


# --------------------------------------------------------------------------
# the "system" section and farmgated -S (the appliance's init scripts)
# --------------------------------------------------------------------------

SYSTEM_STATIC = {
    "hostName": "farmgate",
    "network": {"interface": "eth0", "mode": "static", "address": "192.168.1.10/24",
                "gateway": "192.168.1.1", "dns": ["192.168.1.1", "9.9.9.9"]},
    "ntpServers": ["0.debian.pool.ntp.org", "192.168.1.1"],
}

SYSTEM_DEFAULTS_SH = ("FG_HOSTNAME='farmgate'\n"
                      "FG_NET_IF='eth0'\n"
                      "FG_NET_MODE='dhcp'\n"
                      "FG_NET_ADDRESS=''\n"
                      "FG_NET_GATEWAY=''\n"
                      "FG_NET_DNS=''\n"
                      "FG_NTP_SERVERS=''\n")


def _system_sh(env, name, cfg):
    return env.cli("-S", "-c", env.write_json(name + ".json", cfg))


def _sh_vars(text):
    """What sh makes of -S's output: the FG_* variables it sets, read back by sh itself."""
    p = subprocess.run(["/bin/sh", "-c", text + 'for v in FG_HOSTNAME FG_NET_IF FG_NET_MODE FG_NET_ADDRESS '
                        'FG_NET_GATEWAY FG_NET_DNS FG_NTP_SERVERS; do eval "printf \'%s=%s\\n\' $v \\"\\$$v\\""; done'],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return dict(l.split("=", 1) for l in p.stdout.splitlines())


def test_system_print_defaults(env):
    """-S without a system section: every variable, defaults filled in, nothing else on stdout."""
    p = _system_sh(env, "sys-defaults", _valid())
    assert p.returncode == 0, "-S exit %d: %s" % (p.returncode, p.output)
    assert p.stdout == SYSTEM_DEFAULTS_SH, "-S output:\n%s" % p.stdout
    assert "configuration OK" not in p.output, p.output
    # -t still says OK with or without the section
    cfg = _valid()
    cfg["system"] = SYSTEM_STATIC
    t = _check(env, "sys-check", cfg)
    assert t.returncode == 0 and "configuration OK" in t.output, t.output


def test_system_print_static(env):
    """-S with the full static example: exact lines, and sh reads back the values."""
    cfg = _valid()
    cfg["system"] = SYSTEM_STATIC
    p = _system_sh(env, "sys-static", cfg)
    assert p.returncode == 0, "-S exit %d: %s" % (p.returncode, p.output)
    assert p.stdout == ("FG_HOSTNAME='farmgate'\n"
                        "FG_NET_IF='eth0'\n"
                        "FG_NET_MODE='static'\n"
                        "FG_NET_ADDRESS='192.168.1.10/24'\n"
                        "FG_NET_GATEWAY='192.168.1.1'\n"
                        "FG_NET_DNS='192.168.1.1 9.9.9.9'\n"
                        "FG_NTP_SERVERS='0.debian.pool.ntp.org 192.168.1.1'\n"), p.stdout
    assert _sh_vars(p.stdout) == {
        "FG_HOSTNAME": "farmgate", "FG_NET_IF": "eth0", "FG_NET_MODE": "static",
        "FG_NET_ADDRESS": "192.168.1.10/24", "FG_NET_GATEWAY": "192.168.1.1",
        "FG_NET_DNS": "192.168.1.1 9.9.9.9", "FG_NTP_SERVERS": "0.debian.pool.ntp.org 192.168.1.1"}
    # IPv6, DHCP with its own DNS
    cfg["system"] = {"hostName": "fg-2.example.lan",
                     "network": {"mode": "static", "address": "2001:db8::10/64", "gateway": "2001:db8::1",
                                 "interface": "enp1s0"}}
    p = _system_sh(env, "sys-static6", cfg)
    assert p.returncode == 0, p.output
    v = _sh_vars(p.stdout)
    assert (v["FG_HOSTNAME"], v["FG_NET_IF"], v["FG_NET_ADDRESS"], v["FG_NET_GATEWAY"], v["FG_NET_DNS"]) == \
        ("fg-2.example.lan", "enp1s0", "2001:db8::10/64", "2001:db8::1", ""), p.stdout
    cfg["system"] = {"network": {"dns": ["9.9.9.9"]}}
    p = _system_sh(env, "sys-dhcp-dns", cfg)
    assert p.returncode == 0, p.output
    v = _sh_vars(p.stdout)
    assert (v["FG_NET_MODE"], v["FG_NET_ADDRESS"], v["FG_NET_DNS"]) == ("dhcp", "", "9.9.9.9"), p.stdout


SYSTEM_BROKEN = [
    # (description, system section, JSON path expected in the message)
    ("not an object", [], "$.system: must be an object"),
    ("unknown field", {"hostname": "x"}, "$.system.hostname: unknown field"),
    ("host name with '_'", {"hostName": "farm_gate"}, "$.system.hostName: must be a host name"),
    ("host name label ending in '-'", {"hostName": "farm-.lan"}, "$.system.hostName: must be a host name"),
    ("host name label of 64", {"hostName": "a" * 64}, "$.system.hostName: must be a host name"),
    ("host name with a quote", {"hostName": "farm'gate"}, "$.system.hostName: must be a host name"),
    ("host name 254 long", {"hostName": ".".join(["a" * 63] * 4)[:252] + "ab"},
     "$.system.hostName: must be a host name"),
    ("interface too long", {"network": {"interface": "a" * 16}},
     "$.system.network.interface: must be a network interface name"),
    ("interface with ':'", {"network": {"interface": "eth0:1"}},
     "$.system.network.interface: must be a network interface name"),
    ("unknown mode", {"network": {"mode": "manual"}}, "$.system.network.mode: unknown mode"),
    ("unknown network field", {"network": {"mtu": 1500}}, "$.system.network.mtu: unknown field"),
    ("static without address", {"network": {"mode": "static"}},
     "$.system.network.address: is required with mode static"),
    ("address with dhcp", {"network": {"address": "192.168.1.10/24"}},
     "$.system.network.address: only with mode static"),
    ("gateway with dhcp", {"network": {"mode": "dhcp", "gateway": "192.168.1.1"}},
     "$.system.network.gateway: only with mode static"),
    ("address without prefix", {"network": {"mode": "static", "address": "192.168.1.10"}},
     "$.system.network.address: must be an IPv4 or IPv6 address with its prefix length"),
    ("IPv4 prefix 33", {"network": {"mode": "static", "address": "192.168.1.10/33"}},
     "$.system.network.address: must be an IPv4 or IPv6 address with its prefix length"),
    ("IPv6 prefix 129", {"network": {"mode": "static", "address": "2001:db8::1/129"}},
     "$.system.network.address: must be an IPv4 or IPv6 address with its prefix length"),
    ("gateway not an IP", {"network": {"mode": "static", "address": "10.0.0.2/8", "gateway": "router"}},
     "$.system.network.gateway: must be a numeric IPv4 or IPv6 address"),
    ("gateway of the other family", {"network": {"mode": "static", "address": "10.0.0.2/8", "gateway": "fe80::1"}},
     "$.system.network.gateway: must be an IPv4 address, as address is"),
    ("four DNS servers", {"network": {"dns": ["1.1.1.1", "1.0.0.1", "9.9.9.9", "8.8.8.8"]}},
     "$.system.network.dns: at most 3 entries"),
    ("DNS server by name", {"network": {"dns": ["1.1.1.1", "dns.example"]}},
     "$.system.network.dns[1]: must be a numeric IPv4 or IPv6 address"),
    ("five NTP servers", {"ntpServers": ["a", "b", "c", "d", "e"]}, "$.system.ntpServers: at most 4 entries"),
    ("NTP server with a space", {"ntpServers": ["pool.ntp.org", "ntp server"]},
     "$.system.ntpServers[1]: must be a numeric IPv4 or IPv6 address or a host name"),
    ("NTP server with shell syntax", {"ntpServers": ["$(reboot)"]},
     "$.system.ntpServers[0]: must be a numeric IPv4 or IPv6 address or a host name"),
]


def test_system_errors_name_json_path(env):
    """Every refused system section: -t and -S exit 1 with the error (its JSON path) on
    stderr, and -S prints nothing on stdout."""
    problems = []
    for i, (desc, section, msg) in enumerate(SYSTEM_BROKEN):
        cfg = _valid()
        cfg["system"] = section
        t = _check(env, "sys-broken-t-%02d" % i, cfg)
        p = _system_sh(env, "sys-broken-s-%02d" % i, cfg)
        if t.returncode != 1 or msg not in t.output:
            problems.append("-t, %s: exit %d: %s" % (desc, t.returncode, t.output.strip()[:300]))
        if p.returncode != 1 or msg not in p.stderr:
            problems.append("-S, %s: exit %d, stderr: %s" % (desc, p.returncode, p.stderr.strip()[:300]))
        if p.stdout:
            problems.append("-S, %s: printed on stdout: %r" % (desc, p.stdout[:200]))
    assert not problems, "%d problems with %d broken system sections:\n  %s" % (
        len(problems), len(SYSTEM_BROKEN), "\n  ".join(problems))


def test_system_print_bad_file_and_usage(env):
    """-S on a missing file or broken JSON: exit 1, the error on stderr, stdout empty; -S
    without -c is a usage error; -h documents -S."""
    p = env.cli("-S", "-c", env.path("nope.json"))
    assert p.returncode == 1 and "nope.json" in p.stderr and not p.stdout, p.output
    p = env.cli("-S", "-c", env.write_text("sys-notjson.json", '{"system": {'))
    assert p.returncode == 1 and p.stderr.strip() and not p.stdout, p.output
    p = env.cli("-S")
    assert p.returncode == 2 and "usage" in p.stderr and not p.stdout, p.output
    p = env.cli("-h")
    assert p.returncode == 0 and "-S" in p.stdout, p.output


def test_system_section_survives_reloads(env):
    """farmgated runs with a system section, reloads a changed one, refuses a broken one
    on reload (keeping the running configuration) and serves throughout."""
    a = env.backend(name="A")
    cfg = one_farm_config([a.port])
    cfg["system"] = SYSTEM_STATIC
    fg = env.farmgated(cfg)
    assert http_request(fg.port, "GET", "/", host="web.local").status == 200
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["system"] = {"hostName": "farmgate-2", "network": {"mode": "dhcp"}, "ntpServers": ["192.168.1.1"]}
    ok, line = fg.reload(cfg2)
    assert ok, "a reload with a changed system section failed: %s" % line
    bad = json.loads(json.dumps(cfg2))
    bad["system"]["network"]["address"] = "192.168.1.10/24"
    ok, line = fg.reload(bad)
    assert not ok and "$.system.network.address: only with mode static" in line, line
    r = http_request(fg.port, "GET", "/", host="web.local")
    assert r.status == 200 and r.header("X-Backend") == "A", r.summary()
    fg.assert_alive()


def test_documented_system_example(env):
    """The system example of docs/config-format.md loads, and -S prints exactly the
    assignments shown beside it."""
    with open(os.path.join(ROOT, "docs", "config-format.md")) as f:
        md = f.read()
    m = re.search(r"```json\n(\"system\": \{.*?)```", md, re.S)
    assert m, "no ```json \"system\" example in docs/config-format.md"
    shown = re.search(r"```sh\n(FG_HOSTNAME=.*?)```", md, re.S)
    assert shown, "no ```sh FG_HOSTNAME=... example in docs/config-format.md"
    cfg = _valid()
    cfg["system"] = json.loads("{" + m.group(1) + "}")["system"]
    p = _system_sh(env, "sys-doc", cfg)
    assert p.returncode == 0, p.output
    assert p.stdout == shown.group(1), "-S prints:\n%s\nthe documentation shows:\n%s" % (p.stdout, shown.group(1))
