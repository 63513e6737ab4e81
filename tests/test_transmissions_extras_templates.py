"""Stored templates end to end: `/api/v1/templates` CRUD and `content.template_id`.

The real server over HTTPS, the unmodified `sparkpost` client's `templates` resource
(and `requests` for what it cannot send), an aiosmtpd receiver for the mail a
template makes, and a restart to show templates are kept on disk.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from mx_receiver import Receiver
from server_process import read_acct, wait_until
from sparkpost import SparkPost
from sparkpost.exceptions import SparkPostAPIException
from test_transmissions_extras_e2e import API_KEY, Server, running_server, with_changes

TEMPLATES = "/api/v1/templates"


@pytest.fixture
def server(
    tmp_path: Path, ca: trustme.CA, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    with running_server(tmp_path, ca, receiver.port, monkeypatch) as running:
        yield running


def call(server: Server, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    """A raw request to the API (JSON body unless bytes); the response."""
    headers = {"Authorization": kw.pop("key", API_KEY), "Content-Type": "application/json"}
    headers.update(kw.pop("headers", {}))
    data = body if isinstance(body, bytes) or body is None else None
    return requests.request(
        method,
        f"https://127.0.0.1:{server.api_port}{path}",
        data=data,
        json=None if data is not None or body is None else body,
        headers=headers,
        verify=str(server.bundle),
        timeout=30,
        **kw,
    )


def create_welcome(sp: SparkPost, published: bool = False) -> None:
    sp.templates.create(
        id="welcome",
        name="Welcome mail",
        description="sent on sign-up",
        published=published,
        from_email="Shop <shop@api.example.test>",
        subject="Hello {{name}}",
        html="<p>Hello {{name}}, {{{raw}}}</p>",
        text="Hello {{name}}",
        custom_headers={"X-Campaign": "welcome-{{name}}"},
    )


def parsed(data: bytes) -> Any:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_template_crud_with_the_sparkpost_client(server: Server) -> None:
    """Create a draft, list, get, publish, preview and delete with SparkPost's client."""
    sp = server.sparkpost()
    create_welcome(sp)
    (listed,) = sp.templates.list()
    assert listed["id"] == "welcome" and listed["name"] == "Welcome mail"
    assert (listed["has_draft"], listed["has_published"], listed["published"]) == (
        True,
        False,
        False,
    )
    draft = sp.templates.get("welcome", draft=True)
    assert draft["content"]["subject"] == "Hello {{name}}"
    assert draft["description"] == "sent on sign-up" and draft["published"] is False
    with pytest.raises(SparkPostAPIException) as info:
        sp.templates.get("welcome", draft=False)
    assert info.value.status == 404

    sp.templates.update("welcome", subject="Welcome, {{name}}", published=True)
    latest = sp.templates.get("welcome")
    assert latest["published"] is True and latest["content"]["subject"] == "Welcome, {{name}}"
    assert latest["content"]["text"] == "Hello {{name}}"  # kept from the draft
    (listed,) = sp.templates.list()
    assert (listed["has_draft"], listed["has_published"]) == (False, True)

    preview = sp.templates.preview("welcome", {"name": "Ann <x>", "raw": "<b>!</b>"})
    assert preview["subject"] == "Welcome, Ann <x>"
    assert preview["html"] == "<p>Hello Ann &lt;x&gt;, <b>!</b></p>"
    assert preview["headers"] == {"X-Campaign": "welcome-Ann <x>"}
    assert preview["from"] == {"email": "shop@api.example.test", "name": "Shop"}

    assert sp.templates.delete("welcome") == {}
    assert sp.templates.list() == []
    with pytest.raises(SparkPostAPIException) as info:
        sp.templates.delete("welcome")
    assert info.value.status == 404


def test_transmission_uses_the_published_version_or_the_draft(
    server: Server, receiver: Receiver
) -> None:
    """template_id sends the published version, substituted; use_draft_template the draft."""
    sp = server.sparkpost()
    create_welcome(sp, published=True)
    sp.templates.update("welcome", subject="Draft for {{name}}")  # a new draft
    sp.transmissions.send(
        recipients=[{"address": "ok-pub@dest.example", "substitution_data": {"name": "Ann"}}],
        template="welcome",
        substitution_data={"raw": "<i>hi</i>"},
        campaign="signup",
    )
    sp.transmissions.send(
        recipients=[{"address": "ok-draft@dest.example", "substitution_data": {"name": "Bob"}}],
        template="welcome",
        use_draft_template=True,
    )
    assert wait_until(lambda: len(receiver.messages) == 2)
    by_rcpt = {m.rcpt_tos[0]: parsed(m.data) for m in receiver.messages}
    published = by_rcpt["ok-pub@dest.example"]
    assert published["Subject"] == "Hello Ann"
    assert published["From"] == "Shop <shop@api.example.test>"
    assert published["X-Campaign"] == "welcome-Ann"
    html = published.get_body(("html",)).get_content()
    assert "Hello Ann, <i>hi</i>" in html
    assert by_rcpt["ok-draft@dest.example"]["Subject"] == "Draft for Bob"
    assert wait_until(lambda: len(read_acct(server.acct, "r")) == 2)
    assert {r["jobId"] for r in read_acct(server.acct, "r")} == {"signup", ""}


def test_missing_template_or_version_is_422(server: Server, tmp_path: Path) -> None:
    """A template_id with no such template, or no published version, is a 422; nothing spooled."""
    sp = server.sparkpost()
    create_welcome(sp)  # a draft only
    for template in ("nosuch", "welcome"):
        with pytest.raises(SparkPostAPIException) as info:
            sp.transmissions.send(recipients=["ok@dest.example"], template=template)
        assert info.value.status == 422
        assert template in str(info.value)
    response = call(
        server,
        "POST",
        "/api/v1/transmissions",
        {
            "recipients": ["ok@dest.example"],
            "content": {"template_id": "welcome", "use_draft_template": True, "text": "inline"},
        },
    )
    assert response.status_code == 400
    assert "cannot be combined with content.text" in response.text
    assert not (tmp_path / "spool" / "msg").exists() or not any(
        p.is_file() for p in (tmp_path / "spool" / "msg").rglob("*")
    )


def test_templates_are_kept_across_a_restart(server: Server, receiver: Receiver) -> None:
    """Templates live on disk: after a restart they are listed and used as before."""
    sp = server.sparkpost()
    create_welcome(sp, published=True)
    server.process.stop()
    server.process.start()
    (listed,) = sp.templates.list()
    assert listed["id"] == "welcome" and listed["has_published"] is True
    sp.transmissions.send(
        recipients=[{"address": "ok-after@dest.example", "substitution_data": {"name": "Cy"}}],
        template="welcome",
    )
    assert wait_until(lambda: receiver.messages)
    assert parsed(receiver.messages[0].data)["Subject"] == "Hello Cy"


def test_rfc822_template_needs_a_return_path_and_is_sent_as_is(
    server: Server, receiver: Receiver
) -> None:
    """A template holding email_rfc822 is sent as written (with the transmission's return_path)."""
    raw = "From: a@api.example.test\r\nSubject: stored raw\r\n\r\nraw body\r\n"
    response = call(
        server,
        "POST",
        TEMPLATES,
        {"id": "raw", "published": True, "content": {"email_rfc822": raw}},
    )
    assert response.status_code == 200, response.text
    response = call(
        server,
        "POST",
        "/api/v1/transmissions",
        {
            "return_path": "bounces@api.example.test",
            "recipients": ["ok-raw@dest.example"],
            "content": {"template_id": "raw"},
        },
    )
    assert response.status_code == 200, response.text
    assert wait_until(lambda: receiver.messages)
    (message,) = receiver.messages
    assert message.mail_from == "bounces@api.example.test"
    assert parsed(message.data)["Subject"] == "stored raw"


VALID: dict[str, Any] = {
    "id": "t1",
    "content": {"from": "s@api.example.test", "subject": "s", "text": "t"},
}


def with_(**changes: Any) -> dict[str, Any]:
    return with_changes(VALID, **changes)


@pytest.mark.parametrize(
    ("request_body", "code", "text"),
    [
        (b'{"id": "t1", "content": ', 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"id": "t1\\u0000"}', 400, "NUL"),
        (with_(id="../../etc/passwd"), 400, "id must be"),
        (with_(id="a" * 65), 400, "id must be"),
        (with_(id=7), 400, "id must be"),
        (with_(name="evil\r\nBcc: x@y"), 400, "control character"),
        (with_(description=["list"]), 400, "description must be a string"),
        (with_(content_subject="hi\r\nBcc: victim@example.com"), 400, "header injection"),
        (with_(content_headers={"Bcc": "x@y.example"}), 400, "Bcc"),
        (with_(content_html=5), 400, "content.html must be a string"),
        (with_(content_from="not an address"), 400, "content.from"),
        (with_(content_subject=None), 400, "content.subject is required"),
        (with_(content=None), 400, "content is required"),
        (with_(published="yes"), 400, "published must be true or false"),
        (with_(content_amp_html="<p>"), 422, "content.amp_html"),
        (with_(options={"open_tracking": True}), 422, "options.open_tracking"),
        (with_(options={"tracking": True}), 422, "options.tracking"),
        (with_(shared_with_subaccounts=True), 422, "shared_with_subaccounts"),
        (with_(contents={"text": "typo"}), 422, "contents"),
        (with_(content_body="typo"), 422, "content.body"),
        (with_(content_text="x" * 70_000), 413, "limit"),
    ],
)
def test_bad_template_bodies_are_refused_and_store_nothing(
    server: Server, request_body: Any, code: int, text: str
) -> None:
    """Broken JSON, wrong keys, hostile values and oversized bodies: a clear error, no template."""
    response = call(server, "POST", TEMPLATES, request_body)
    assert response.status_code == code, response.text
    assert text in response.json()["errors"][0]["description"]
    assert call(server, "GET", TEMPLATES).json() == {"results": []}


def test_template_requests_need_a_key_and_json(server: Server) -> None:
    """No or a wrong API key is a 403; a body that is not JSON is a 415; nothing stored."""
    assert call(server, "POST", TEMPLATES, VALID, key="").status_code == 403
    assert call(server, "GET", TEMPLATES, key="wrong" * 8).status_code == 403
    response = call(server, "POST", TEMPLATES, b"id=t1", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert call(server, "GET", TEMPLATES).json() == {"results": []}


def test_duplicate_ids_conflict_and_updates_check_like_creates(server: Server) -> None:
    """A second create of an id is a 409; a bad update is refused and changes nothing."""
    assert call(server, "POST", TEMPLATES, VALID).status_code == 200
    assert call(server, "POST", TEMPLATES, VALID).status_code == 409
    bad = call(server, "PUT", f"{TEMPLATES}/t1", {"content": {"from": "x", "text": "t"}})
    assert bad.status_code == 400
    bad = call(server, "PUT", f"{TEMPLATES}/t1", {"id": "t2"})
    assert bad.status_code == 422 and "id" in bad.text
    bad = call(server, "PUT", f"{TEMPLATES}/t1?update_published=true", {"name": "n"})
    assert bad.status_code == 422 and "published version" in bad.text
    assert call(server, "PUT", f"{TEMPLATES}/t1?draft=maybe", {}).status_code == 200
    shown = call(server, "GET", f"{TEMPLATES}/t1").json()["results"]
    assert shown["content"] == VALID["content"] and shown["name"] == "t1"
    assert call(server, "GET", f"{TEMPLATES}/t1?draft=maybe").status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        f"{TEMPLATES}/..%2F..%2Fetc%2Fpasswd",
        f"{TEMPLATES}/a%00b",
        f"{TEMPLATES}/%E2%80%A8",
        f"{TEMPLATES}/{'x' * 300}",
        f"{TEMPLATES}/t1/nothing/here",
    ],
)
def test_hostile_template_paths_are_404(server: Server, path: str) -> None:
    """Ids that are not SparkPost ids never reach the file system: a JSON 404."""
    assert call(server, "POST", TEMPLATES, VALID).status_code == 200
    response = call(server, "GET", path)
    assert response.status_code == 404
    assert response.json()["errors"]
    assert [t["id"] for t in call(server, "GET", TEMPLATES).json()["results"]] == ["t1"]


def test_concurrent_creates_and_updates_keep_one_whole_template(
    server: Server, tmp_path: Path
) -> None:
    """Ten clients creating one id at once: one 200, nine 409; parallel PUTs leave valid JSON."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = sorted(
            pool.map(lambda _: call(server, "POST", TEMPLATES, VALID).status_code, range(10))
        )
    assert codes == [200] + [409] * 9

    def rename(n: int) -> int:
        return call(server, "PUT", f"{TEMPLATES}/t1", {"name": f"name-{n}"}).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert set(pool.map(rename, range(10))) == {200}
    shown = call(server, "GET", f"{TEMPLATES}/t1").json()["results"]
    assert shown["name"] in {f"name-{n}" for n in range(10)}
    files = sorted(p.name for p in (tmp_path / "spool" / "templates").iterdir())
    assert files == ["t1.json"]  # no temporary file left behind
    json.loads((tmp_path / "spool" / "templates" / "t1.json").read_text())


def test_hostile_substitution_into_a_template_is_refused(server: Server, tmp_path: Path) -> None:
    """CR/LF substituted into a template's header fields: a 400 (preview and send), no mail."""
    sp = server.sparkpost()
    create_welcome(sp, published=True)
    hostile = {"name": "Ann\r\nBcc: victim@example.com"}
    response = call(server, "POST", f"{TEMPLATES}/welcome/preview", {"substitution_data": hostile})
    assert response.status_code == 400 and "injection" in response.text
    response = call(
        server,
        "POST",
        "/api/v1/transmissions",
        {
            "recipients": [{"address": "ok@dest.example", "substitution_data": hostile}],
            "content": {"template_id": "welcome"},
        },
    )
    assert response.status_code == 400 and "injection" in response.text
    messages = tmp_path / "spool" / "msg"
    assert not messages.exists() or not any(p.is_file() for p in messages.rglob("*"))
