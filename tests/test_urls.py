"""Masking of the passwords and tokens in URLs that messages, log lines and the
audit trail quote."""

import pytest

from callguard.notify.webhook import shown_url
from callguard.urls import mask_url

# fmt: off
MASKED = [
    # (text, shown)
    ("http://callguard:Sup3rS3cret@127.0.0.1:8088/", "http://callguard:***@127.0.0.1:8088/"),
    ("http://bob:HookPw9@127.0.0.1:9/hook", "http://bob:***@127.0.0.1:9/hook"),
    ("https://127.0.0.1/hook?x=1&token=T0ken&api_key=K3y#top",
     "https://127.0.0.1/hook?x=1&token=***&api_key=***#top"),
    ("http://127.0.0.1:8088/?api_key=callguard:Sup3rS3cret", "http://127.0.0.1:8088/?api_key=***"),
    ("https://127.0.0.1/api/x?sig=S1g&code=C0de", "https://127.0.0.1/api/x?sig=***&code=***"),
    ("https://127.0.0.1/x?access_token=T&X-Api-Key=K&signature=S&apikey=A&auth=U",
     "https://127.0.0.1/x?access_token=***&X-Api-Key=***&signature=***&apikey=***&auth=***"),
    ("postgresql+psycopg://cg@h/db?sslpassword=P&passfile=/etc/pgpass",
     "postgresql+psycopg://cg@h/db?sslpassword=***&passfile=***"),
    # Characters that belong escaped in a password, but that users write as they are.
    ("http://cg:p@ss/w?rd@127.0.0.1/", "http://cg:***@127.0.0.1/"),
    ("http://callguard:Sup3r/S3cret@127.0.0.1:8088/", "http://callguard:***@127.0.0.1:8088/"),
    ("http://cg:pa?ss#word@127.0.0.1/", "http://cg:***@127.0.0.1/"),
    ("http://cg:two words@127.0.0.1/", "http://cg:***@127.0.0.1/"),
    ("http://us@er:pw@127.0.0.1/", "http://us@er:***@127.0.0.1/"),
    ("http://cg:1234@127.0.0.1/", "http://cg:***@127.0.0.1/"),
    ("http://cg:p%40ss@[::1]:8088/", "http://cg:***@[::1]:8088/"),
    # An "@" after the host is taken for one in the password.
    ("http://cg:pw@127.0.0.1/hook?to=noc@example.com", "http://cg:***@example.com"),
    # Chat webhooks that take their token in the path.
    ("https://hooks.slack.com/services/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",
     "https://hooks.slack.com/services/T0AB12CD3/B0EF45GH6/***"),
    ("https://discord.com/api/webhooks/123456789012345678/"
     "AbCdEfGhIjKlMnOpQrStUvWxYz-abcdefghijklmnopqrstuvwxyzABCDEFGH",
     "https://discord.com/api/webhooks/123456789012345678/***"),
    ("wss://127.0.0.1/feed/abcdefghijklmnop1?x=1", "wss://127.0.0.1/feed/***?x=1"),
    ("'url https://hooks.slack.com/services/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' "
     "is not a setting", "'url https://hooks.slack.com/services/T0AB12CD3/B0EF45GH6/***' "
     "is not a setting"),
    # An SMTP host written with its login.
    ("cg:MailPw1@mail.example.com", "cg:***@mail.example.com"),
    # Messages that quote URLs.
    ("url http://a:A1@127.0.0.1/ or http://b:B2@127.0.0.2/",
     "url http://a:***@127.0.0.1/ or http://b:***@127.0.0.2/"),
    ("1: bad\n2: 'http://a:A1@127.0.0.1/' is invalid\n3: noc@example.com",
     "1: bad\n2: 'http://a:***@127.0.0.1/' is invalid\n3: noc@example.com"),
]

KEPT = [
    "http://127.0.0.1:8088/",
    "http://callguard@127.0.0.1:8088/",
    "http://[::1]:8088/?to=noc@example.com",
    "http://127.0.0.1:8088/users/@me",
    "https://hooks.example.com:8443/cb?to=noc@example.com&kind=limit",
    "sqlite:////var/lib/callguard/callguard.db",
    "postgresql+psycopg://callguard@127.0.0.1/callguard?sslmode=require",
    "postgresql+psycopg://cg@h/db?sslkey=/etc/cg.key&sslcert=/etc/cg.pem&require_auth=scram-sha-256",
    "https://127.0.0.1/x?monkey=1&keyword=2&zipcode=3&author=4",
    "127.0.0.1:4573",
    "http://127.0.0.1:8088/ari/channels/1796397405.12345",
    "https://hooks.example.com/callguard/alerts-to-the-noc",
    "sqlite:////var/lib/callguard/callguard-2026-12-05-backup.db",
    "mail.example.com",
    "noc@example.com",
    "Mon-Fri 08:00-18:00",
    "reload of /etc/callguard/callguard.conf failed: noc@example.com: x",
]
# fmt: on


@pytest.mark.parametrize("text, shown", MASKED)
def test_mask_url_masks(text, shown):
    assert mask_url(text) == shown


@pytest.mark.parametrize("text", KEPT)
def test_mask_url_keeps_text_without_secret(text):
    assert mask_url(text) == text


@pytest.mark.parametrize("text, shown", MASKED)
def test_mask_url_twice_same(text, shown):
    assert mask_url(mask_url(text)) == shown


def test_shown_url_drops_credentials():
    url = "http://bob:HookPw9@127.0.0.1:9/hook?token=T0ken"

    assert shown_url(url) == "http://127.0.0.1:9"
