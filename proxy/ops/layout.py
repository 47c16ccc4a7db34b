"""What every /_proxy/ page shares: the area's paths, the stylesheet and the document around
a page's body, escaping, and the way moments and lengths of time are written.

Every value that reaches a page goes through `esc` (`html.escape`), or `quote` and then `esc`
when it is part of a URL. Plain data in, text out: no I/O, no request, no secrets.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

STATUS_PATH: Final = "/_proxy/"
LOGIN_PATH: Final = "/_proxy/login"
KEY_PATH: Final = "/_proxy/subscription-key"
REVOKE_PATH: Final = "/_proxy/revoke"

_CSS: Final = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:2rem;
color:#1f2328;background:#f6f8fa}
h1{font-size:1.4rem;margin:0 0 .3rem}
h2{font-size:1.15rem;margin:0}
p.lead{color:#59636e;margin:0 0 1.2rem}
code{font-size:.85em;background:#eff2f5;padding:.05rem .25rem;border-radius:4px}
small{color:#59636e}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(30rem,100%),1fr));
gap:1rem;max-width:84rem;align-items:start}
.card{background:#fff;border:1px solid #d1d9e0;border-radius:10px;padding:1rem 1.2rem}
.card-head{display:flex;align-items:center;justify-content:space-between;gap:1rem}
.card .meta{color:#59636e;font-size:.85rem;margin:.3rem 0 .8rem;overflow-wrap:anywhere}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-size:.8rem;
font-weight:600;white-space:nowrap}
.badge.linked{background:#dafbe1;color:#116329}
.badge.failing{background:#fff8c5;color:#7d4e00}
.badge.needs-consent{background:#ffebe9;color:#a40e26}
.badge.not-linked{background:#eff2f5;color:#59636e}
.badge.credentials-refused{background:#ffebe9;color:#a40e26}
dl.facts{display:grid;grid-template-columns:8rem minmax(0,1fr);gap:.35rem .8rem;
margin:.8rem 0}
dl.facts dt{color:#59636e;font-size:.85rem}
dl.facts dd{margin:0;overflow-wrap:anywhere}
ul.scopes{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.3rem}
ul.scopes li{font:.8rem ui-monospace,monospace;padding:.05rem .4rem;border-radius:4px;
border:1px solid #d1d9e0}
ul.scopes li.granted{background:#dafbe1;border-color:#4ac26b}
ul.scopes li.granted::before{content:"\\2713  "}
ul.scopes li.missing{background:#ffebe9;border-color:#ff8182;text-decoration:line-through}
ul.scopes li.extra{background:#ddf4ff;border-color:#54aeff}
ul.scopes li.extra::before{content:"+ "}
form{margin:0}
form.inline{display:flex;gap:.4rem;margin-top:.35rem}
form.inline input{flex:1 1 6rem}
form.connect{display:flex;align-items:center;gap:.5rem;flex-wrap:wrap}
form.connect label{display:flex;align-items:center;gap:.4rem;font-size:.85rem;color:#59636e}
input[type=password]{font:inherit;padding:.25rem .5rem;border:1px solid #d1d9e0;
border-radius:6px;min-width:0;width:14rem}
.actions{display:flex;align-items:flex-start;gap:.8rem;flex-wrap:wrap;padding-top:.8rem;
border-top:1px solid #d1d9e0}
button,a.button{font:inherit;font-weight:600;padding:.3rem .9rem;border-radius:6px;
border:1px solid #d1d9e0;background:#eff2f5;color:#1f2328;cursor:pointer;
text-decoration:none;display:inline-block;white-space:nowrap}
button.primary,a.button{background:#1f883d;border-color:#1a7f37;color:#fff}
button.danger{background:#cf222e;border-color:#a40e26;color:#fff}
a.button.secondary{background:#eff2f5;color:#1f2328;border-color:#d1d9e0}
details.revoke summary{cursor:pointer;color:#a40e26;font-weight:600;padding:.3rem 0}
details.revoke p{font-size:.85rem;color:#59636e;max-width:24rem}
.box{border:1px solid #d1d9e0;border-radius:8px;padding:.2rem 1rem;max-width:44rem;
margin:.6rem 0;background:#fff}
.box.notice{max-width:84rem;margin:0 0 1rem}
.box.error{border-color:#ff8182;background:#fff5f5}
.box.ok{border-color:#4ac26b;background:#f4fff6}
.box.warn{border-color:#d4a72c;background:#fffbea}
.card .box{max-width:none;font-size:.9rem}
""".strip()



def esc(value: object) -> str:
    """Text for HTML element content and quoted attribute values."""
    return html.escape(str(value), quote=True)



def login_href(connection: str) -> str:
    return f"{LOGIN_PATH}?connection={quote(connection, safe='')}"



# --- time -----------------------------------------------------------------------------------


def format_utc(timestamp: float) -> str:
    """An absolute moment, e.g. "2026-11-23 09:16:14 UTC"."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    """A rough length of time: "45 s", "12 min", "3 h 5 min", "29 d"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{math.floor(seconds)} s"
    minutes = math.floor(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d"


def format_relative(timestamp: float, now: float) -> str:
    """In the future: "in 12 min"; in the past: "3 min ago"."""
    delta = timestamp - now
    if delta >= 0:
        return f"in {format_duration(delta)}"
    return f"{format_duration(-delta)} ago"


# --- the document ---------------------------------------------------------------------------


def document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)} · nmbrs-proxy</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def paragraphs(lines: Iterable[str]) -> str:
    return "".join(f"<p>{esc(line)}</p>" for line in lines)

