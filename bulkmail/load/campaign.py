"""Load a campaign YAML file into a validated `Campaign`, with file and line in every error."""

from __future__ import annotations

import difflib
import math
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bulkmail.errors import ConfigError, Location, RecipientError
from bulkmail.feedback.verp import return_path_problem
from bulkmail.load.recipients import check_address
from bulkmail.models import (
    DEFAULT_PORTS,
    MAILBOX_PORTS,
    AttachmentSpec,
    Campaign,
    DkimSettings,
    InboxSettings,
    PostgresSettings,
    Rate,
    SmtpSettings,
    Unsubscribe,
)

TOP_KEYS = (
    "name", "from", "reply_to", "subject", "template", "text_template", "recipients",
    "data", "attachments", "unsubscribe", "suppress", "smtp", "rate", "preview",
    "base_url", "headers", "allow_special_domains", "dkim", "cc", "bcc", "markdown", "layout",
    "images", "return_path", "inbox", "suppression_store", "soft_bounce_limit", "journal",
)  # fmt: skip
REQUIRED = ("from", "subject", "recipients")  # and a body: template, markdown or text_template
SMTP_KEYS = (
    "host", "port", "security", "username", "password_env", "timeout", "ca_file",
    "local_hostname", "max_per_connection", "allow_plaintext_auth", "weight", "rate",
)  # fmt: skip
INBOX_KEYS = (
    "protocol", "host", "port", "security", "username", "password_env", "folder", "timeout",
    "ca_file", "allow_plaintext_auth",
)  # fmt: skip
JOURNAL_KEYS = ("url", "password_env", "lease")
DKIM_KEYS = ("domain", "selector", "private_key_file", "private_key_env", "algorithm")
DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
DKIM_DOMAIN = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")  # lower case, no final dot
DKIM_SELECTOR = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")  # DNS labels
RATE_UNITS = {"per_second": 1.0, "per_minute": 60.0, "per_hour": 3600.0}
JOURNAL_FOLDER = ".bulkmail"
# Without a `rate:`, one mail a second: slow enough for any provider's limits (and for a
# mistake to be stopped early); the plan shown before sending says so.
DEFAULT_RATE = Rate(per_second=1.0, burst=1, text="1 per second (the default; set rate:)")
_JINJA = re.compile(r"{{|{%")
# Headers bulkmail writes itself; a campaign may not set them through `headers:`.
_RESERVED_HEADERS = {
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "reply-to", "mime-version",
    "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
    "x-bulkmail-campaign",
}  # fmt: skip
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
# What EHLO may carry (RFC 5321 4.1.1.1): a host name or an address literal, one word.
_EHLO_NAME = re.compile(r"[A-Za-z0-9_.-]+|\[[A-Za-z0-9:.]+\]")
# How many values aliases may add to a campaign file's YAML (a hand-written campaign has a
# few hundred in all); a "billion laughs" file is refused at once.
MAX_ALIASED_VALUES = 100_000
# How deep lists and mappings may nest: far more than any campaign needs, and shallow enough
# that composing and constructing (both recursive) stay within Python's recursion limit.
MAX_YAML_DEPTH = 100


class _YamlLimit(Exception):
    """A YAML alias that can't be allowed, with where it stands."""

    def __init__(self, message: str, mark: Any) -> None:  # a yaml Mark, or None
        super().__init__(message)
        self.message = message
        self.line: int | None = mark.line + 1 if mark is not None else None


class _GuardedLoader(yaml.SafeLoader):
    """The safe loader, checking each alias as the node graph is composed.

    Composing keeps an alias as a second reference to its anchor's node, so it is cheap;
    what expands it (constructing, printing, rendering) is not. So each node's expanded
    size is counted as it completes (its children's sizes are known by then) and compared
    with the number of values written so far; and an alias to a node that is still being
    composed is a cycle. Both are caught before any value exists.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to, once complete
        self._written = 0  # nodes composed so far, not counting aliases
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: yaml.AliasEvent = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _YamlLimit(
                    "a YAML alias refers to the value that contains it (a recursive alias)",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            raise _YamlLimit(
                f"lists and mappings nested more than {MAX_YAML_DEPTH} deep",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        assert node is not None  # None only at the end of the stream, never asked for here
        self._written += 1
        size = 1 + sum(self._sizes[id(child)] for child in _children(node))
        if size > self._written + MAX_ALIASED_VALUES:
            raise _YamlLimit(
                f"YAML aliases expand this value by more than {MAX_ALIASED_VALUES:,} values "
                "(an alias bomb?); write the values out instead",
                node.start_mark,
            )
        self._sizes[id(node)] = size
        return node


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


@dataclass(frozen=True)
class _Node:
    """A YAML node with the file it came from, so every value can say where it was written."""

    node: yaml.Node
    path: Path
    field: str

    def where(self) -> Location:
        return Location(self.path, self.node.start_mark.line + 1, self.field)

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, where=self.where())

    def mapping(self, keys: tuple[str, ...] | None) -> dict[str, _Node]:
        """The node as a mapping, rejecting keys not in ``keys`` (if given) with a suggestion."""
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"must be a mapping of settings, not {self._kind()}")
        out: dict[str, _Node] = {}
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            field = f"{self.field}.{key}" if self.field else str(key)
            where = _Node(key_node, self.path, field)
            if not isinstance(key, str) or (keys is not None and key not in keys):
                raise where.error(_unknown_key(str(key), keys or ()))
            if key in out:
                raise where.error("is set twice")
            out[key] = _Node(value_node, self.path, field)
        return out

    def items(self) -> Iterator[_Node]:
        """The node as a list of nodes."""
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"must be a list, not {self._kind()}")
        for index, item in enumerate(self.node.value):
            yield _Node(item, self.path, f"{self.field}[{index}]")

    def value(self) -> Any:
        """The node as plain Python data."""
        return yaml.SafeLoader("").construct_object(self.node, deep=True)

    def text(self) -> str:
        value = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"must be a non-empty text, not {self._kind()}")
        return value.strip()

    def number(self, *, minimum: float, integer: bool = False) -> float:
        value = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        kind = int if integer else (int, float)
        if isinstance(value, float) and not math.isfinite(value):
            # .nan passes every comparison, .inf every minimum: neither is a rate or a time.
            raise self.error(f"must be a finite number, not {self._kind()}")
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            what = "a whole number" if integer else "a number"
            raise self.error(f"must be {what} of at least {minimum:g}, not {self._kind()}")
        return value

    def file(self, base: Path, *, must_exist: bool = True, folder: bool = False) -> Path:
        """A path relative to the campaign file's folder."""
        path = (base / Path(self.text()).expanduser()).resolve()
        if must_exist and not path.exists():
            raise self.error(f"{self.value()}: no such {'folder' if folder else 'file'}")
        if must_exist and not folder and not path.is_file():
            raise self.error(f"{self.value()}: is not a file")
        return path

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        value = self.value()
        if value is None:
            return "empty"
        return f"{type(value).__name__} {value!r}"


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    if key == "password":
        return (
            "a password is never written in the campaign file; name the environment "
            "variable that holds it with password_env (or type it when asked)"
        )
    if not known:
        return "keys must be plain names"
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    return f"unknown key{hint}"


def load_campaign(path: str | Path) -> Campaign:
    """Read and check a campaign YAML file.

    Example::

        campaign = load_campaign("campaigns/june.yaml")
        print(campaign.name, campaign.recipients)
    """
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such campaign file", where=Location(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the campaign file: {exc}", where=Location(path)) from exc
    try:
        root = yaml.compose(text, Loader=_GuardedLoader)
    except _YamlLimit as exc:
        raise ConfigError(exc.message, where=Location(path, exc.line)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(filter(None, [exc.problem, exc.context and f"({exc.context})"]))
        raise ConfigError(f"malformed YAML: {problem}", where=Location(path, line)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", where=Location(path)) from exc
    if root is None:
        raise ConfigError("the campaign file is empty", where=Location(path))
    return _build(_Node(root, path, ""), path)


def as_campaign(campaign: Campaign | str | Path) -> Campaign:
    """A campaign given loaded or by its file (as every entry point of the API takes it)."""
    return campaign if isinstance(campaign, Campaign) else load_campaign(campaign)


def _build(root: _Node, path: Path) -> Campaign:
    base = path.parent
    keys = root.mapping(TOP_KEYS)
    for key in REQUIRED:
        if key not in keys:
            raise ConfigError(f"missing required key '{key}'", where=Location(path))
    _check_body_keys(keys, path)

    def opt(key: str, convert: Callable[[_Node], Any]) -> Any:
        node = keys.get(key)
        if node is None or (isinstance(node.node, yaml.ScalarNode) and node.value() is None):
            return None  # absent, or written as an empty value
        return convert(node)

    preview = opt("preview", lambda n: n.mapping(("out",)))
    preview_out = (
        preview["out"].file(base, must_exist=False)
        if preview and "out" in preview
        else (base / "previews" / path.stem).resolve()
    )
    data = opt("data", _data) or {}
    name = opt("name", _Node.text) or _name_from_file(path)
    if not re.fullmatch(r"[\w.-]+", name):
        raise keys["name"].error(f"{name!r}: use letters, digits, '.', '-' and '_' only")
    recipients, recipients_delimiter = _csv_file(keys["recipients"], base)
    suppress, suppress_delimiter = opt("suppress", lambda n: _csv_file(n, base)) or (None, None)
    special = bool(opt("allow_special_domains", _flag))
    return_path, return_path_secret_env = opt(
        "return_path", lambda n: _return_path(n, special)
    ) or (None, None)
    return Campaign(
        path=path,
        name=name,
        sender=keys["from"].text(),
        reply_to=opt("reply_to", _Node.text),
        subject=keys["subject"].text(),
        template=keys["template"].file(base) if "template" in keys else None,
        markdown=keys["markdown"].file(base) if "markdown" in keys else None,
        layout=keys["layout"].file(base) if "layout" in keys else None,
        text_template=(
            keys["text_template"].file(base)
            if "template" not in keys and "markdown" not in keys
            else opt("text_template", lambda n: n.file(base))
        ),
        recipients=recipients,
        recipients_delimiter=recipients_delimiter,
        data=data,
        attachments=tuple(opt("attachments", lambda n: _attachments(n, base)) or ()),
        unsubscribe=opt("unsubscribe", _unsubscribe),
        suppress=suppress,
        suppress_delimiter=suppress_delimiter,
        allow_special_domains=special,
        cc=opt("cc", lambda n: _copies(n, special)) or (),
        bcc=opt("bcc", lambda n: _copies(n, special)) or (),
        **(opt("smtp", lambda n: _relays(n, base)) or {}),
        dkim=opt("dkim", lambda n: _dkim(n, base)),
        rate=opt("rate", _rate) or DEFAULT_RATE,
        preview_out=preview_out,
        journal_dir=base / JOURNAL_FOLDER,
        base_url=opt("base_url", _url),
        headers=opt("headers", _headers) or {},
        images=opt("images", _images) or "embed",
        return_path=return_path,
        return_path_secret_env=return_path_secret_env,
        inbox=opt("inbox", lambda n: _inbox(n, base)),
        journal=opt("journal", _journal),
        suppression_store=opt("suppression_store", lambda n: n.file(base, must_exist=False)),
        soft_bounce_limit=int(
            opt("soft_bounce_limit", lambda n: n.number(minimum=1, integer=True)) or 3
        ),
        where={key: node.where() for key, node in keys.items()},
    )


def _check_body_keys(keys: dict[str, _Node], path: Path) -> None:
    """One body: an HTML ``template``, a ``markdown`` file (in a ``layout``), or a
    ``text_template`` alone (a plain-text mail)."""
    if "template" in keys and "markdown" in keys:
        raise keys["markdown"].error(
            "template and markdown are two bodies: keep one (a Markdown body goes in "
            "layout:, an HTML file with {{ content }})"
        )
    if "layout" in keys and "markdown" not in keys:
        raise keys["layout"].error("a layout wraps a Markdown body: add markdown:")
    if not {"template", "markdown", "text_template"} & keys.keys():
        raise ConfigError(
            "missing required key 'template' (an HTML template), or 'markdown', or "
            "'text_template' for a plain-text mail",
            where=Location(path),
        )


def _name_from_file(path: Path) -> str:
    """The campaign's name when it sets none: the file's, with other characters as '-'."""
    name = re.sub(r"[^\w.-]+", "-", path.stem).strip("-.")
    if not name:
        raise ConfigError(
            "cannot make a campaign name from the file name; add name: (letters, digits, "
            "'.', '-' and '_')",
            where=Location(path, field="name"),
        )
    return name


def _flag(node: _Node) -> bool:
    value = node.value() if isinstance(node.node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        raise node.error(f"must be true or false, not {node._kind()}")
    return value


def _csv_file(node: _Node, base: Path) -> tuple[Path, str | None]:
    """A CSV file setting: a path, or ``{path: ..., delimiter: ";"}``."""
    if not isinstance(node.node, yaml.MappingNode):
        return node.file(base), None
    fields = node.mapping(("path", "delimiter"))
    if "path" not in fields:
        raise node.error("needs a 'path'")
    delimiter = _delimiter(fields["delimiter"]) if "delimiter" in fields else None
    return fields["path"].file(base), delimiter


def _delimiter(node: _Node) -> str:
    # Not .text(): that would strip a tab.
    value = node.value() if isinstance(node.node, yaml.ScalarNode) else None
    if not isinstance(value, str) or len(value) != 1 or value in '"\r\n':
        raise node.error(
            "must be one character other than a quote or a line break, e.g. ';' or '\\t', "
            f"not {node._kind()}"
        )
    return value


def _hostname(node: _Node) -> str:
    name = node.text()
    if not _EHLO_NAME.fullmatch(name):
        raise node.error(
            f"{name!r}: must be a host name (letters, digits, '.', '-') or an address literal "
            "such as [192.0.2.1], with no spaces or line breaks"
        )
    return name


def _data(node: _Node) -> dict[str, Any]:
    return {key: value.value() for key, value in node.mapping(None).items()}


def _attachments(node: _Node, base: Path) -> list[AttachmentSpec]:
    specs = []
    for item in node.items():
        folder = None
        if isinstance(item.node, yaml.ScalarNode):
            path_node, filename = item, None
        else:
            fields = item.mapping(("path", "filename"))
            if "path" not in fields:
                raise item.error("needs a 'path'")
            path_node = fields["path"]
            filename = fields["filename"].text() if "filename" in fields else None
        raw = path_node.text()
        templated = bool(_JINJA.search(raw))
        if templated:
            resolved = raw if Path(raw).is_absolute() else str(base / raw)
            folder = _template_folder(raw, base)
        else:
            # Checked, with everything else about attachments, in compose/attachments.py.
            resolved = str(path_node.file(base, must_exist=False))
        specs.append(
            AttachmentSpec(resolved, filename, item.where(), templated, written=raw, folder=folder)
        )
    return specs


def _template_folder(raw: str, base: Path) -> Path:
    """The folder a templated path names before its first ``{{``/``{%``: what each
    recipient's path must stay in. ``files/{{ id }}.pdf`` -> ``files/``."""
    match = _JINJA.search(raw)
    literal = raw[: match.start()] if match else raw
    folder = literal[: literal.rfind("/") + 1]  # "" without a slash: the campaign's folder
    try:
        return (base / Path(folder).expanduser()).resolve()
    except RuntimeError:  # ~user of no such user
        return (base / folder).resolve()


def _unsubscribe(node: _Node) -> Unsubscribe:
    fields = node.mapping(("url", "mailto"))
    if not fields:
        raise node.error("needs a 'url' (https) and/or a 'mailto' address")
    url = fields["url"].text() if "url" in fields else None
    if url is not None and not url.startswith("https://") and not _JINJA.match(url):
        raise fields["url"].error(
            f"{url!r}: must be an https:// URL (one-click unsubscribe, RFC 8058)"
        )
    mailto = fields["mailto"].text() if "mailto" in fields else None
    if mailto is not None and mailto.startswith("mailto:"):
        mailto = mailto[len("mailto:") :]
    return Unsubscribe(url=url, mailto=mailto)


def _relays(node: _Node, base: Path) -> dict[str, Any]:
    """``smtp:``: one relay (a mapping), or several (a list of them), which share the mails
    by weight. The Campaign's ``smtp`` is the first relay; ``relays`` all of them when
    ``smtp:`` is a list (else empty)."""
    if not isinstance(node.node, yaml.SequenceNode):
        return {"smtp": _smtp(node, base)}
    relays: list[SmtpSettings] = []
    seen: dict[str, str] = {}  # relay name -> the item that named it first
    for item in node.items():
        relay = _smtp(item, base)
        if relay.name in seen:
            raise item.error(f"{relay.name} is already {seen[relay.name]}: give each relay once")
        seen[relay.name] = item.field
        relays.append(relay)
    if not relays:
        raise node.error("an empty list: give one relay (a mapping) or a list of them")
    return {"smtp": relays[0], "relays": tuple(relays)}


def _smtp(node: _Node, base: Path) -> SmtpSettings:
    """One relay: a mapping of SMTP_KEYS (``node.field`` names it in errors: ``smtp`` or
    ``smtp[2]`` in a list); ``weight`` and ``rate`` matter when there are several."""
    fields = node.mapping((*SMTP_KEYS, "password"))
    if "password" in fields:
        raise fields["password"].error(_unknown_key("password", SMTP_KEYS))
    if "host" not in fields:
        raise node.error("needs a 'host'")
    security = fields["security"].text() if "security" in fields else "ssl"
    if security not in DEFAULT_PORTS:
        raise fields["security"].error(
            f"{security!r}: must be one of ssl (implicit TLS), starttls, none"
        )
    port = int(fields["port"].number(minimum=1, integer=True)) if "port" in fields else None
    if port is not None and port > 65535:
        raise fields["port"].error(f"{port}: not a TCP port")

    def get(key: str, convert: Callable[[_Node], Any]) -> Any:
        return convert(fields[key]) if key in fields else None

    password_env = get("password_env", _Node.text)
    if password_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", password_env):
        raise fields["password_env"].error(
            f"{password_env!r}: must be the name of an environment variable, not the password"
        )
    max_per = get("max_per_connection", lambda n: int(n.number(minimum=1, integer=True)))
    weight = get("weight", _weight)
    settings = SmtpSettings(
        host=fields["host"].text(),
        port=port or DEFAULT_PORTS[security],
        security=security,  # type: ignore[arg-type]  # checked above
        username=get("username", _Node.text),
        password_env=password_env,
        timeout=float(get("timeout", lambda n: n.number(minimum=0.1)) or 30.0),
        ca_file=get("ca_file", lambda n: n.file(base)),
        local_hostname=get("local_hostname", _hostname),
        max_per_connection=max_per,
        allow_plaintext_auth=bool(get("allow_plaintext_auth", _flag)),
        weight=1.0 if weight is None else weight,
        rate=get("rate", _rate),
    )
    problem = settings.plaintext_auth_problem()  # found here, before anything is sent
    if problem is not None:
        raise fields["username"].error(problem)
    return settings


def _weight(node: _Node) -> float:
    """A relay's share of the mails relative to the others': a number above 0."""
    weight = float(node.number(minimum=0))
    if weight <= 0:
        raise node.error("must be a number above 0 (a relay's share of the mails), not 0")
    return weight


def _env_name(node: _Node, what: str) -> str:
    """The name of an environment variable (never the secret itself, which is not shown)."""
    name = node.text()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise node.error(f"must be the name of an environment variable, not the {what}")
    return name


def _return_path(node: _Node, allow_special_domains: bool) -> tuple[str, str | None]:
    """``return_path: bounces@example.com`` or ``{address: ..., secret_env: NAME}``: the
    address each mail's VERP envelope sender is made from (bounces+<token>@example.com)."""
    if isinstance(node.node, yaml.MappingNode):
        fields = node.mapping(("address", "secret_env"))
        if "address" not in fields:
            raise node.error("needs an 'address', e.g. bounces@example.com")
        address_node = fields["address"]
        secret_env = _env_name(fields["secret_env"], "key") if "secret_env" in fields else None
    else:
        address_node, secret_env = node, None
    try:
        address = check_address(
            address_node.text(), address_node.where(), allow_special_domains=allow_special_domains
        )
    except RecipientError as exc:
        raise address_node.error(exc.message) from None
    problem = return_path_problem(address)
    if problem is not None:
        raise address_node.error(problem)
    return address, secret_env


def _inbox(node: _Node, base: Path) -> InboxSettings:
    """The mailbox bounces and replies come back to, as `bulkmail inbox` reads it."""
    fields = node.mapping((*INBOX_KEYS, "password"))
    if "password" in fields:
        raise _Node(fields["password"].node, node.path, "inbox.password").error(
            _unknown_key("password", INBOX_KEYS)
        )
    for key in ("protocol", "host", "username"):
        if key not in fields:
            raise node.error(f"needs a '{key}'")
    protocol = fields["protocol"].text().lower()
    if protocol not in MAILBOX_PORTS:
        raise fields["protocol"].error(f"{protocol!r}: must be imap or pop3")
    security = fields["security"].text() if "security" in fields else "ssl"
    if security not in DEFAULT_PORTS:
        raise fields["security"].error(
            f"{security!r}: must be one of ssl (implicit TLS), starttls, none"
        )
    port = int(fields["port"].number(minimum=1, integer=True)) if "port" in fields else None
    if port is not None and port > 65535:
        raise fields["port"].error(f"{port}: not a TCP port")
    folder = fields["folder"].text() if "folder" in fields else "INBOX"
    if protocol == "pop3" and "folder" in fields:
        raise fields["folder"].error("POP3 has one mailbox and no folders: remove folder:")
    if any(c in folder for c in '\r\n"'):
        raise fields["folder"].error(f"{folder!r}: not a folder name")
    settings = InboxSettings(
        protocol=protocol,  # type: ignore[arg-type]  # checked above
        host=fields["host"].text(),
        port=port or MAILBOX_PORTS[protocol][security],
        username=fields["username"].text(),
        security=security,  # type: ignore[arg-type]  # checked above
        password_env=(
            _env_name(fields["password_env"], "password") if "password_env" in fields else None
        ),
        folder=folder,
        timeout=float(fields["timeout"].number(minimum=0.1)) if "timeout" in fields else 30.0,
        ca_file=fields["ca_file"].file(base) if "ca_file" in fields else None,
        allow_plaintext_auth=_flag(fields["allow_plaintext_auth"])
        if "allow_plaintext_auth" in fields
        else False,
    )
    problem = SmtpSettings(
        settings.host,
        settings.port,
        settings.security,
        settings.username,
        allow_plaintext_auth=settings.allow_plaintext_auth,
    ).plaintext_auth_problem()
    if problem is not None:
        raise fields["username"].error(problem)
    return settings


def _dkim(node: _Node, base: Path) -> DkimSettings:
    """Where the signing key is kept (a file or an environment variable, never the key
    itself); the key is read and checked once per run by compose/dkim.py."""
    fields = node.mapping((*DKIM_KEYS, "private_key"))
    if "private_key" in fields:
        raise fields["private_key"].error(
            "the private key is never written in the campaign file; name its file with "
            "private_key_file or the environment variable that holds it with private_key_env"
        )
    for key in ("domain", "selector"):
        if key not in fields:
            raise node.error(f"needs a '{key}'")
    sources = [key for key in ("private_key_file", "private_key_env") if key in fields]
    if len(sources) != 1:
        raise node.error("give exactly one of private_key_file, private_key_env")
    domain = fields["domain"].text().rstrip(".").lower()
    if not DKIM_DOMAIN.fullmatch(domain):
        raise fields["domain"].error(f"{domain!r}: must be a domain name, e.g. example.com")
    selector = fields["selector"].text()
    if not DKIM_SELECTOR.fullmatch(selector):
        raise fields["selector"].error(
            f"{selector!r}: must be a DNS label (letters, digits, '-', '_'), e.g. news2026"
        )
    key_env = fields["private_key_env"].text() if "private_key_env" in fields else None
    if key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        # Not shown if it may be the key itself, pasted where its variable's name belongs.
        shown = f"{key_env!r}: " if len(key_env) <= 64 and "-----" not in key_env else ""
        raise fields["private_key_env"].error(
            f"{shown}must be the name of an environment variable, not the key"
        )
    algorithm = fields["algorithm"].text() if "algorithm" in fields else None
    if algorithm is not None and algorithm not in DKIM_ALGORITHMS:
        raise fields["algorithm"].error(
            f"{algorithm!r}: must be one of {', '.join(DKIM_ALGORITHMS)}"
        )
    key_file = fields["private_key_file"].file(base) if "private_key_file" in fields else None
    return DkimSettings(
        domain=domain,
        selector=selector,
        private_key_file=key_file,
        private_key_env=key_env,
        algorithm=algorithm,  # type: ignore[arg-type]  # checked above
        key_where=fields[sources[0]].where(),
    )


def _copies(node: _Node, allow_special_domains: bool) -> tuple[str, ...]:
    """``cc:``/``bcc:``: one address or a list of them, each checked as a recipient's is
    (a bare address: a copy has no name to greet), so a typo stops the run before it starts."""
    items = list(node.items()) if isinstance(node.node, yaml.SequenceNode) else [node]
    addresses: list[str] = []
    for item in items:
        try:
            address = check_address(
                item.text(), item.where(), allow_special_domains=allow_special_domains
            )
        except RecipientError as exc:
            raise item.error(exc.message) from None
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def _rate(node: _Node) -> Rate:
    fields = node.mapping((*RATE_UNITS, "burst"))
    units = [key for key in RATE_UNITS if key in fields]
    if len(units) != 1:
        raise node.error("give exactly one of per_second, per_minute, per_hour")
    unit = units[0]
    amount = fields[unit].number(minimum=0)
    burst = int(fields["burst"].number(minimum=1, integer=True)) if "burst" in fields else 1
    if amount == 0:
        return Rate(per_second=None, burst=burst, text="unlimited")
    text = f"{amount:g} {unit.replace('_', ' ')}"
    return Rate(per_second=amount / RATE_UNITS[unit], burst=burst, text=text)


def _journal(node: _Node) -> PostgresSettings:
    """``journal: postgresql://user@host/db`` or ``{url: ..., password_env: NAME, lease: 30}``:
    a journal in PostgreSQL, which several senders of the campaign share."""
    if isinstance(node.node, yaml.MappingNode):
        fields = node.mapping(JOURNAL_KEYS)
        if "url" not in fields:
            raise node.error("needs a 'url', e.g. postgresql://bulkmail@db.example.com/mail")
        url_node = fields["url"]
        password_env = (
            _env_name(fields["password_env"], "password") if "password_env" in fields else None
        )
        lease = float(fields["lease"].number(minimum=1)) if "lease" in fields else None
    else:
        url_node, password_env, lease = node, None, None
    url = url_node.text()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise url_node.error(
            f"{url!r}: the journal is kept in a file by default; `journal:` names a PostgreSQL "
            "database shared by several senders: postgresql://user@host/database"
        )
    query = urllib.parse.parse_qs(parts.query)
    if parts.password is not None or "password" in query:
        raise url_node.error(
            "the URL holds a password: take it out, and give it in PGPASSWORD, ~/.pgpass or "
            "the variable named by `password_env` (never in the campaign file)"
        )
    if lease is None:
        return PostgresSettings(url=url, password_env=password_env)
    return PostgresSettings(url=url, password_env=password_env, lease=lease)


def _url(node: _Node) -> str:
    url = node.text()
    if not re.match(r"https?://", url):
        raise node.error(f"{url!r}: must be an http(s) URL")
    return url


def _images(node: _Node) -> str:
    mode = node.text()
    if mode not in ("embed", "link"):
        raise node.error(f"{mode!r}: must be embed (inside each mail) or link (URLs)")
    return mode


def _headers(node: _Node) -> dict[str, str]:
    fields = node.mapping(None)
    headers = {}
    for name, value in fields.items():
        if not _HEADER_NAME.match(name) or name.lower() in _RESERVED_HEADERS:
            raise value.error(f"{name!r}: not a header a campaign may set")
        text = value.text()
        if "\r" in text or "\n" in text:
            raise value.error("a header value must be one line")
        headers[name] = text
    return headers
