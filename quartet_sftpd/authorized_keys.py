"""
OpenSSH authorized_keys lines: the key, its options, and what they allow.

Of the options, C{from="..."} and C{expiry-time="..."} are honoured, and the
flags that forbid what an SFTP-only server refuses anyway (C{restrict},
C{no-pty}, ...) are accepted.  Any other option makes a line unusable: an
option the server cannot honour must not quietly widen what a key may do.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import BadKeyError, Key

from quartet_sftpd.hostkeys import fingerprint

#: Options whose meaning the server enforces.
HONOURED_OPTIONS = ("from", "expiry-time")

#: Flags that forbid what the SFTP-only server never allows; accepted as-is.
IMPLIED_FLAGS = (
    "restrict",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
)

# One option: a name, then maybe ="value" in which \" stands for a quote
# (as OpenSSH's authorized_keys parser reads it), then a comma or the end.
_OPTION = re.compile(r'([A-Za-z0-9-]+)(?:="((?:\\.|[^"\\])*)")?(,|$)')

# The first word of a line that starts with its key rather than options.
_KEY_TYPE = re.compile(r"(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BadKeyLine(Exception):
    """
    One authorized_keys line cannot be used; the message says why.
    """


@dataclass(frozen=True)
class _AddressPattern:
    """
    One entry of a C{from=} pattern-list: a network (an address is a network
    of one) or a glob with C{*} and C{?}, maybe negated with C{!}.
    """

    negated: bool
    network: _Network | None
    glob: str | None

    def matches(self, address: _Address) -> bool:
        if self.network is not None:
            return address in self.network
        assert self.glob is not None
        # fnmatch knows [...] classes, OpenSSH patterns do not: quote "[".
        return fnmatchcase(str(address), self.glob.replace("[", "[[]"))


def _parse_from(value: str) -> tuple[_AddressPattern, ...]:
    """
    Read a C{from=} pattern-list: comma-separated entries, each an address,
    a CIDR network or a glob, C{!} in front to exclude.

    @raise BadKeyLine: an entry is empty or a malformed network.
    """
    patterns = []
    for entry in value.split(","):
        entry = entry.strip()
        negated = entry.startswith("!")
        body = entry[1:] if negated else entry
        if not body or any(c.isspace() for c in body):
            raise BadKeyLine(f'from="{value}" has an empty or blank entry')
        network = glob = None
        if "/" in body:
            try:
                network = ipaddress.ip_network(body, strict=False)
            except ValueError:
                raise BadKeyLine(f'from= entry "{body}" is not a network') from None
        else:
            try:
                network = ipaddress.ip_network(body)
            except ValueError:
                glob = body.lower()
        patterns.append(_AddressPattern(negated, network, glob))
    return tuple(patterns)


def _parse_expiry(value: str) -> float:
    """
    Read an C{expiry-time=} value: C{YYYYMMDD}, C{YYYYMMDDHHMM} or
    C{YYYYMMDDHHMMSS}, in local time or in UTC with a C{Z} at the end.

    @return: the POSIX time after which the key is refused.
    @raise BadKeyLine: the value has another form or is not a real date.
    """
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    digits = value[:-1] if value[-1:] in ("Z", "z") else value
    try:
        if not digits.isdigit() or len(digits) not in formats:
            raise ValueError(value)
        moment = datetime.strptime(digits, formats[len(digits)])
    except ValueError:
        raise BadKeyLine(
            f'expiry-time="{value}" is not a time: write YYYYMMDD[HHMM[SS]][Z]'
        ) from None
    if digits != value:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class AuthorizedKey:
    """
    One public key a user may log in with, and the options that limit it.

    @ivar key: the public key.
    @ivar options: option name (lower case) to its value, or L{None} for a
        flag, as written in the file.
    @ivar comment: the text after the key, often who it belongs to.
    @ivar fingerprint: C{SHA256:...}, as OpenSSH prints it.
    @ivar expires: the POSIX time after which the key is refused, from
        C{expiry-time}, or L{None}.
    """

    key: Key
    options: Mapping[str, str | None] = field(default_factory=dict)
    comment: str = ""
    fingerprint: str = ""
    expires: float | None = None
    _from: tuple[_AddressPattern, ...] | None = field(default=None, repr=False)

    @property
    def key_type(self) -> str:
        """
        The SSH key type, such as C{ssh-ed25519}.
        """
        return self.key.sshType().decode("ascii")

    def expired(self, now: float) -> bool:
        """
        Whether the key's C{expiry-time} lies before C{now} (POSIX time).
        """
        return self.expires is not None and now > self.expires

    def allows_address(self, host: str | None) -> bool:
        """
        Whether a client at C{host} may use this key under its C{from=}
        option, read as OpenSSH reads a pattern-list: the address must match
        an entry, and no C{!} entry.

        Host names are not looked up: like OpenSSH with its default
        C{UseDNS no}, a name pattern is matched against the address text.

        @param host: the client's IP address, or L{None} if unknown.
        @return: C{True} if the key has no C{from=} option.
        """
        if self._from is None:
            return True
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        allowed = False
        for pattern in self._from:
            if pattern.matches(address):
                if pattern.negated:
                    return False
                allowed = True
        return allowed

    def line(self) -> str:
        """
        This key as one authorized_keys line, without the newline.
        """
        parts = []
        if self.options:
            options = self.options.items()
            parts.append(",".join(_render_option(n, v) for n, v in options))
        parts.append(self.key.toString("OPENSSH").decode("ascii"))
        if self.comment:
            parts.append(self.comment)
        return " ".join(parts)


def _render_option(name: str, value: str | None) -> str:
    """
    One option as written in authorized_keys, quotes in the value escaped.
    """
    if value is None:
        return name
    escaped = value.replace('"', '\\"')
    return f'{name}="{escaped}"'


def _split_options(line: str) -> tuple[str, str]:
    """
    Split a line into its options and the rest, at the first blank outside
    double quotes.
    """
    quoted = False
    index = 0
    while index < len(line):
        char = line[index]
        if quoted and line.startswith('\\"', index):
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            break
        index += 1
    if quoted:
        raise BadKeyLine("an option value has no closing quote")
    return line[:index], line[index:].lstrip()


def _parse_options(text: str) -> dict[str, str | None]:
    """
    Read an options field such as C{from="10.0.0.0/8",no-pty}.

    @raise BadKeyLine: the field is malformed or names an option twice.
    """
    options: dict[str, str | None] = {}
    position = 0
    while position < len(text):
        match = _OPTION.match(text, position)
        if match is None or match.end() == position:
            raise BadKeyLine(f"the options {text!r} are malformed")
        name = match.group(1).lower()
        if name in options:
            raise BadKeyLine(f"the option {name} appears twice")
        value = match.group(2)
        options[name] = None if value is None else value.replace('\\"', '"')
        position = match.end()
        if match.group(3) == "," and position == len(text):
            raise BadKeyLine(f"the options {text!r} end with a comma")
    return options


def _parse_key(text: str) -> tuple[Key, str]:
    """
    Read C{type base64 [comment]}.

    @return: the key and its comment.
    @raise BadKeyLine: not a public key the server can use.
    """
    fields = text.split(None, 2)
    if len(fields) < 2:
        raise BadKeyLine("there is no key on it")
    key_type, encoded = fields[0], fields[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
        key = Key.fromString(blob, type="blob")
        declared = getNS(blob)[0].decode("ascii")
    except (binascii.Error, BadKeyError, ValueError, UnicodeError) as error:
        raise BadKeyLine(f"the {key_type} key cannot be read ({error})") from None
    except Exception:
        # Conch raises assorted errors on a truncated blob.
        raise BadKeyLine(f"the {key_type} key is damaged") from None
    if declared != key_type:
        raise BadKeyLine(f"it says {key_type} but holds a {declared} key")
    if key.type() == "DSA":
        raise BadKeyLine("ssh-dss keys are no longer safe: use an ssh-ed25519 key")
    if key.type() == "RSA" and key.size() < 1024:
        raise BadKeyLine(
            f"a {key.size()}-bit RSA key is too short: use 2048 bits or more"
        )
    return key, fields[2].strip() if len(fields) > 2 else ""


def parse_line(line: str) -> AuthorizedKey:
    """
    Read one authorized_keys line (not blank, not a comment).

    @raise BadKeyLine: the line is malformed, holds no usable key, or has an
        option the server cannot honour.
    """
    options: dict[str, str | None] = {}
    if _KEY_TYPE.fullmatch(line.split(None, 1)[0]):
        key, comment = _parse_key(line)
    else:
        options_text, rest = _split_options(line)
        if not rest:
            raise BadKeyLine("there is no key on it")
        options = _parse_options(options_text)
        key, comment = _parse_key(rest)
    unsupported = sorted(
        name for name in options if name not in HONOURED_OPTIONS + IMPLIED_FLAGS
    )
    if unsupported:
        several = len(unsupported) > 1
        raise BadKeyLine(
            f"the option{'s' if several else ''} {', '.join(unsupported)} cannot "
            f"be honoured by this server: remove {'them' if several else 'it'}; "
            "only from=, expiry-time= and restriction flags such as no-pty are "
            "supported"
        )
    for name in IMPLIED_FLAGS:
        if options.get(name) is not None:
            raise BadKeyLine(f"the flag {name} takes no value")
    for name in HONOURED_OPTIONS:
        if name in options and options[name] is None:
            raise BadKeyLine(f'the option {name} needs a value: {name}="..."')
    from_value, expiry = options.get("from"), options.get("expiry-time")
    return AuthorizedKey(
        key=key,
        options=options,
        comment=comment,
        fingerprint=fingerprint(key),
        expires=None if expiry is None else _parse_expiry(expiry),
        _from=None if from_value is None else _parse_from(from_value),
    )


def parse_lines(data: bytes) -> Iterable[tuple[int, bytes, AuthorizedKey | str]]:
    """
    Read an authorized_keys file.

    @return: for each line that is neither blank nor a comment: its number
        (from 1), its raw bytes, and the key or the reason it is unusable.
    """
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.decode("utf-8", errors="replace").strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield number, raw, parse_line(line)
        except BadKeyLine as error:
            yield number, raw, str(error)


def usable_keys(data: bytes) -> list[AuthorizedKey]:
    """
    The usable keys of an authorized_keys file, bad lines left out.
    """
    return [entry for _, _, entry in parse_lines(data) if not isinstance(entry, str)]


def parse_rfc4716(data: bytes) -> list[AuthorizedKey]:
    """
    Read keys in the SSH2 public key file format (RFC 4716), which PuTTYgen
    and some commercial clients export.

    @raise BadKeyLine: a block is damaged.
    """
    keys = []
    blocks = re.findall(
        rb"---- BEGIN SSH2 PUBLIC KEY ----(.*?)---- END SSH2 PUBLIC KEY ----",
        data,
        re.S,
    )
    for block in blocks:
        comment, body, continued = "", [], False
        for raw in block.decode("utf-8", errors="replace").splitlines():
            line = raw.strip()
            was_header, continued = continued, line.endswith("\\")
            if was_header or ":" in line:
                name, _, value = line.partition(":")
                if name.strip().lower() == "comment":
                    comment = value.strip().strip('"')
            elif line:
                body.append(line)
        encoded = "".join(body)
        try:
            blob = base64.b64decode(encoded, validate=True)
            key, _ = _parse_key(f"{getNS(blob)[0].decode('ascii')} {encoded}")
        except (binascii.Error, UnicodeError, struct.error, BadKeyLine) as error:
            raise BadKeyLine(
                f"an SSH2 public key block cannot be read: {error}"
            ) from None
        keys.append(AuthorizedKey(key, {}, comment, fingerprint(key)))
    return keys
