"""Hardening: a monitor client never sees a secret; only config files are reachable.

The config API reads need admin and show secrets as `********`; a commit keeping the
placeholder keeps the old value; keys, certificates and data files beside the config
are refused; problems in files outside the config set never show their text; stale
`.tmp-*` files of a crashed commit are removed at start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mgmt_client import API_KEY, MgmtServer
from mx_receiver import Receiver

from mtaserver.config.files import (
    PathRefused,
    commit_files,
    config_file_path,
    remove_stale_temporaries,
)
from mtaserver.config.load import load_config
from mtaserver.config.redact import (
    REDACTED,
    RedactionError,
    redact_config_text,
    redact_values,
    restore_secrets,
)

API_SECRET = "apikey_0123456789_0123456789_0123456789"
SECRETS = {
    "api-key": API_SECRET,
    "auth-password": "relay-pass-77",
    "bind-password": "ldap-bind-88",
    "password": "{PLAIN}user-pass-99",
}

EXTRA = f"""
<transmissions-api>
  api-key {API_SECRET}
</transmissions-api>
<ldap corp>
  uri ldap://127.0.0.1:1
  bind-dn cn=svc
  bind-password {SECRETS["bind-password"]}   # service account
</ldap>
<smtp-user bob>
  password {SECRETS["password"]}
</smtp-user>
<domain relay.test>
  auth-username u
  auth-password "{SECRETS["auth-password"]}"
</domain>
"""


def test_redaction_covers_every_secret_directive() -> None:
    """Each secret directive's value becomes ******** ; comments and other lines stay."""
    text = (
        "http-api-key K1\nhttp-api-key K2 # second\n<acct-file a.csv>\n"
        "  http-webhook-hmac-key H\n  http-webhook-url http://x/\n</acct-file>\n" + EXTRA
    )
    shown = redact_config_text(text)
    for value in ("K1", "K2", "H", *SECRETS.values()):
        assert value not in shown
    assert "http-api-key ********\nhttp-api-key ******** # second\n" in shown
    assert "  bind-password ********   # service account\n" in shown
    assert "http-webhook-url http://x/" in shown and "auth-username u" in shown


def test_placeholder_keeps_the_value_at_its_place() -> None:
    """A commit of the redacted text gives back the original; new placeholders are refused."""
    text = "http-api-key K1\nhttp-api-key K2\n" + EXTRA
    assert restore_secrets(redact_config_text(text), text) == text
    changed = redact_config_text(text).replace("http-api-key ********\n", "http-api-key NEW\n", 1)
    assert restore_secrets(changed, text).startswith("http-api-key NEW\nhttp-api-key K2\n")
    with pytest.raises(RedactionError) as info:
        restore_secrets("http-api-key K1\nhttp-api-key K2\nhttp-api-key ********\n", text)
    assert info.value.line == 3
    with pytest.raises(RedactionError):
        restore_secrets("<smtp-user eve>\n  password ********\n</smtp-user>\n", text)


def test_redact_values_hides_settings_fields() -> None:
    """Settings and log fields named like a secret are replaced, others kept."""
    data = {"http_api_key": ["a", "b"], "host_name": "h", "nested": [{"bind_password": "p"}]}
    assert redact_values(data) == {
        "http_api_key": [REDACTED, REDACTED],
        "host_name": "h",
        "nested": [{"bind_password": REDACTED}],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    directory = tmp_path_factory.mktemp("secrets")
    with Receiver() as receiver:
        mgmt = MgmtServer(directory, receiver.port)
        with open(mgmt.process.config, "a") as stream:
            stream.write(EXTRA)
        (directory / "tls.pem").write_text("-----BEGIN PRIVATE KEY-----\nsecretkeymaterial\n")
        (directory / "acct.csv").write_text("type,rcpt\nd,someone@private.test\n")
        (directory / ".tmp-crashed").write_text("half a config")
        (directory / "conf.d" / ".tmp-also").write_text("half a file")
        mgmt.start()
        try:
            yield mgmt
        finally:
            mgmt.stop()


def test_monitor_cannot_read_config_and_admin_sees_no_secret(server: MgmtServer) -> None:
    """A monitor address gets 403 for a read; an admin read and show settings hide secrets."""
    status, reply = server.call("GET", "/configFile", {"op": "read", "filename": "mtaserver.conf"})
    assert status == 403 and "admin" in reply["message"]
    status, reply = server.call(
        "GET", "/configFile", {"op": "read", "filename": "mtaserver.conf"}, key=API_KEY
    )
    assert status == 200
    text = reply["data"]
    for secret in (API_KEY, *SECRETS.values()):
        assert secret not in text
    assert f"http-api-key {REDACTED}" in text and f"api-key {REDACTED}" in text
    status, settings = server.command("show settings", key=None)
    assert status == 200 and API_KEY not in json.dumps(settings)
    assert settings["data"]["global"]["http_api_key"] == [REDACTED]
    assert API_KEY not in server.process.read_log()


def test_only_config_files_are_reachable(server: MgmtServer) -> None:
    """Keys and data files beside the config are 403 to read, commit and test config."""
    for name in ("tls.pem", "acct.csv", "twistd.log"):
        status, reply = server.call(
            "GET", "/configFile", {"op": "read", "filename": name}, key=API_KEY
        )
        assert status == 403, (name, reply)
        fields = {"op": "commit", "file.1.name": name, "file.1.content": "x\n"}
        assert server.call("POST", "/configFile", fields, key=API_KEY)[0] == 403
        status, reply = server.command(f"test config {name}")
        assert status == 400 and "secretkeymaterial" not in json.dumps(reply)
    assert "secretkeymaterial" in (server.directory / "tls.pem").read_text()


def test_commit_keeps_redacted_secrets(server: MgmtServer) -> None:
    """The redacted read committed back changes nothing; a stray placeholder is a 400."""
    before = server.process.config.read_text()
    _, reply = server.call(
        "GET", "/configFile", {"op": "read", "filename": "mtaserver.conf"}, key=API_KEY
    )
    fields = {"op": "commit", "file.1.name": "mtaserver.conf", "file.1.content": reply["data"]}
    status, answer = server.call("POST", "/configFile", fields, key=API_KEY)
    assert status == 200, answer
    assert server.process.config.read_text() == before
    fields["file.1.content"] = (
        reply["data"] + f"<smtp-user eve>\n  password {REDACTED}\n</smtp-user>\n"
    )
    status, answer = server.call("POST", "/configFile", fields, key=API_KEY)
    assert status == 400 and "no earlier value" in answer["message"]
    assert server.process.config.read_text() == before
    assert server.command("reload")[0] == 200
    assert server.call("GET", "/status", key=API_KEY)[0] == 200


def test_commit_error_never_shows_an_outside_file(
    server: MgmtServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`include` of a file outside the config set fails without quoting its lines."""
    outside = tmp_path_factory.mktemp("elsewhere") / "shadow"
    outside.write_text("root:$6$topsecrethash:19000:0:99999:7:::\n")
    fields = {
        "op": "commit",
        "file.1.name": "conf.d/evil.conf",
        "file.1.content": f"include {outside}\n",
    }
    status, reply = server.call("POST", "/configFile", fields, key=API_KEY)
    assert status == 400
    assert "topsecrethash" not in json.dumps(reply) and "contents are not shown" in reply["message"]
    assert not (server.directory / "conf.d" / "evil.conf").exists()


def test_stale_temporaries_are_removed_at_start(server: MgmtServer) -> None:
    """`.tmp-*` files a killed commit left in the config folders are gone once it runs."""
    assert not (server.directory / ".tmp-crashed").exists()
    assert not (server.directory / "conf.d" / ".tmp-also").exists()
    assert (server.directory / "acct.csv").exists()


def test_remove_stale_temporaries_only_touches_config_folders(tmp_path: Path) -> None:
    """Only `.tmp-*` files in the config's folders go; spool `.tmp` files stay."""
    (tmp_path / "main.conf").write_text(f"spool {tmp_path}/spool\n")
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / ".tmp-x").write_text("")
    (tmp_path / "msg.tmp").write_text("")
    (tmp_path / ".tmp-abc").write_text("")
    config = load_config(str(tmp_path / "main.conf"))
    assert remove_stale_temporaries(config) == [str(tmp_path / ".tmp-abc")]
    assert sorted(os.listdir(tmp_path)) == ["main.conf", "msg.tmp", "spool"]
    assert os.listdir(tmp_path / "spool") == [".tmp-x"]


def test_config_file_path_and_commit_units(tmp_path: Path) -> None:
    """A non-.conf file is refused; a commit keeping ******** writes the old secret."""
    (tmp_path / "main.conf").write_text(f"spool {tmp_path}/spool\nhttp-api-key K1\n")
    (tmp_path / "key.pem").write_text("k")
    config = load_config(str(tmp_path / "main.conf"))
    with pytest.raises(PathRefused):
        config_file_path(config, "key.pem")
    path = config_file_path(config, "main.conf")
    assert commit_files(config, {path: f"spool {tmp_path}/spool\nhttp-api-key ********\n"}) == []
    assert (tmp_path / "main.conf").read_text().endswith("http-api-key K1\n")


def test_log_observer_redacts_secret_fields() -> None:
    """A log event carrying a credential field is written with ******** instead."""
    from twisted.logger import formatEvent

    from mtaserver.logs import RedactingObserver

    seen: list[dict] = []
    observer = RedactingObserver(seen.append)
    observer(
        {
            "log_format": "bind as {bind_dn} with {bind_password}",
            "bind_dn": "cn=x",
            "bind_password": "p4ss",
            "settings": {"http_api_key": ["k"]},
        }
    )
    observer({"log_format": "plain {n}", "n": 1})
    assert formatEvent(seen[0]) == f"bind as cn=x with {REDACTED}"
    assert seen[0]["settings"] == {"http_api_key": [REDACTED]} and seen[1]["n"] == 1


_NAMES = st.sampled_from(
    ["http-api-key", "password", "bind-password", "host-name", "api-key", "max-smtp-out"]
)
_VALUES = st.text(alphabet="abcXYZ019_{}$./-", min_size=1, max_size=12)
_LINES = st.one_of(
    st.tuples(_NAMES, _VALUES).map(lambda nv: f"  {nv[0]} {nv[1]}"),
    st.sampled_from(["<smtp-user a>", "</smtp-user>", "<ldap b>", "</ldap>", "# note", ""]),
)


@given(st.lists(_LINES, max_size=20))
def test_redacted_text_round_trips(lines: list[str]) -> None:
    """Committing a redacted read back gives exactly the text on disk, and shows no secret."""
    text = "\n".join(lines) + "\n"
    shown = redact_config_text(text)
    assert restore_secrets(shown, text) == text
    assert redact_config_text(shown) == shown
