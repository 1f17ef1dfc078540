"""The wire protocol of docs/PROTOCOL.md: frames, the handshake, and value conversions."""

import os
import socket
import struct
import uuid

import msgpack

MAGIC = "tatzelwurm"
PROTOCOL_VERSION = 4
MAX_FRAME = 16 * 1024 * 1024
DEFAULT_ADDR = "127.0.0.1:5677"


class TatzelwurmError(Exception):
    """An error reply from the coordinator: `kind` for programs, `message` for people."""

    def __init__(self, kind, message):
        super().__init__(f"{message} ({kind})")
        self.kind = kind
        self.message = message


class ProtocolError(Exception):
    """The connection broke or carried something that is not the protocol."""


def default_token_file():
    """The token of a coordinator on this machine with its default data dir."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tatzelwurm", "token")


def read_token(token_file=None):
    """The token to present: the named file (which must exist), else the default one if present."""
    if token_file is None:
        token_file = os.environ.get("TATZELWURM_TOKEN_FILE")
        if token_file is None:
            default = default_token_file()
            if not os.path.exists(default):
                return ""
            token_file = default
    with open(token_file) as f:
        return f.read().strip()


UNIX_PREFIX = "unix:"


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def open_socket(addr, timeout):
    """A connected socket to `addr`: `unix:PATH` is a coordinator's Unix socket (tatzelwurm
    --socket), anything else `HOST:PORT` over TCP."""
    if addr.startswith(UNIX_PREFIX):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(addr[len(UNIX_PREFIX):])
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection(split_addr(addr), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(body):
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def send_frame(sock, obj):
    body = pack(obj)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the maximum frame")
    sock.sendall(struct.pack(">I", len(body)) + body)


def _read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("connection closed in the middle of a frame")
            raise ProtocolError("connection closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock):
    (n,) = struct.unpack(">I", _read_exact(sock, 4))
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes exceeds the maximum of {MAX_FRAME}")
    return unpack(_read_exact(sock, n))


def variant(msg):
    """Splits an enum value into (name, content): "draining" or {"dispatch": {...}}."""
    if isinstance(msg, str):
        return msg, None
    if isinstance(msg, dict) and len(msg) == 1:
        return next(iter(msg.items()))
    raise ProtocolError(f"not an enum value: {msg!r}")


def connect(addr, role, token, timeout=10.0):
    """Opens a connection and shakes hands; returns (socket, welcome dict)."""
    try:
        sock = open_socket(addr, timeout)
    except OSError as e:
        raise ConnectionError(f"cannot reach the coordinator at {addr}: {e}") from e
    hello = {"magic": MAGIC, "version": PROTOCOL_VERSION, "role": role, "codec": "msgpack", "token": token}
    send_frame(sock, hello)
    name, body = variant(recv_frame(sock))
    if name == "welcome":
        sock.settimeout(None)
        return sock, body
    sock.close()
    raise TatzelwurmError(body.get("kind", "rejected"), body.get("message", "the coordinator refused the connection"))


# ---- values ------------------------------------------------------------------------------------

def task_id_bytes(task_id):
    """A task id (UUID, 16 bytes, or a full hex string) as the 16 bytes the protocol carries."""
    if isinstance(task_id, uuid.UUID):
        return task_id.bytes
    if isinstance(task_id, (bytes, bytearray)) and len(task_id) == 16:
        return bytes(task_id)
    return uuid.UUID(str(task_id)).bytes


def id_text(task_id):
    """A task id or prefix as the string the requests carry."""
    if isinstance(task_id, uuid.UUID):
        return str(task_id)
    if isinstance(task_id, (bytes, bytearray)):
        return str(uuid.UUID(bytes=bytes(task_id)))
    return str(task_id)


def encode_data(value):
    """User data travels as the bytes of a MessagePack document; None is no data."""
    return b"" if value is None else pack(value)


def decode_data(raw):
    return None if not raw else unpack(raw)


def tags_list(tags):
    """Tags from {"k": "v"}, ["k=v"], or [("k", "v")] to the protocol's [{"key", "value"}]."""
    if not tags:
        return []
    if isinstance(tags, dict):
        items = tags.items()
    else:
        items = [t.split("=", 1) if isinstance(t, str) else t for t in tags]
    out = []
    for k, v in items:
        out.append({"key": str(k), "value": str(v)})
    return out


def tags_text(tags):
    return [f"{t['key']}={t['value']}" for t in tags or []]


def to_ms(seconds):
    return None if seconds is None else int(round(seconds * 1000))


def decode_ids(obj):
    """Turns every 16-byte id field of a reply into a uuid.UUID, recursively."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("id", "task") and isinstance(v, (bytes, bytearray)) and len(v) == 16:
                out[k] = uuid.UUID(bytes=bytes(v))
            else:
                out[k] = decode_ids(v)
        return out
    if isinstance(obj, list):
        return [decode_ids(x) for x in obj]
    return obj
