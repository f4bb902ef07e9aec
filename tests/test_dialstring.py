"""Finding the dialled number in the dialstrings Asterisk reports in Dial events."""

import pytest

from callguard.metering.dialstring import dialled_endpoint, dialled_number, masked

# fmt: off
DIALSTRINGS = [
    ("gamma/01632960000",                      "01632960000"),
    ("01632960000@gamma",                      "01632960000"),
    ("0044123456@outbound",                    "0044123456"),
    ("0044123456@sink/n",                      "0044123456"),
    ("gamma/sip:+441632960000@sip.example.net", "+441632960000"),
    ("gamma/sip:01632960000@192.0.2.10:5060",  "01632960000"),
    ("carrier:s3cret@192.0.2.10/09011234567",  "09011234567"),
    ("g1/00441632960000",                      "00441632960000"),
    ("trunk-1/118118",                         "118118"),
    ("gamma/*21*0044123",                      "*21*0044123"),
    ("gamma",                                  None),
    ("09098790000@441632960000",               "09098790000"),
    ("441632960000/09098790000",               "09098790000"),
    ("441632960000/sip:09098790000@192.0.2.10", "09098790000"),
    ("0044123456@44123456789/n",               "0044123456"),
    ("192.0.2.10/01632960000@from-callguard",  "01632960000"),
    ("441632960000",                           None),
    ("gamma/sip:host.example.net",             None),
    ("",                                       None),
]
# fmt: on


@pytest.mark.parametrize("dialstring, number", DIALSTRINGS)
def test_dialled_number(dialstring, number):
    assert dialled_number(dialstring) == number


# IAX2/[user[:secret]@]peer/exten[@context]: a user named with digits is no number.
@pytest.mark.parametrize("dialstring, number", [
    ("myuser@provider/09061234567",            "09061234567"),
    ("441632960000@provider/999",              "999"),
    ("441632960000:s3cret@provider/999",       "999"),
    ("provider/01632960000@from-callguard",    "01632960000"),
    ("provider",                               None),
])
def test_dialled_number_iax2(dialstring, number):
    assert dialled_number(dialstring, "IAX2") == number


def test_masked_hides_credentials():
    assert masked("carrier:s3cret@192.0.2.10/09011234567") == "***@192.0.2.10/09011234567"
    assert "s3cret" not in masked("iax:s3cret@host/123")


@pytest.mark.parametrize("resource, endpoint", [
    ("999@gamma", "gamma"),
    ("gamma/999", "gamma"),
    ("gamma/sip:999@192.0.2.10", "gamma"),
    ("myuser@provider/09061234567", "provider"),
])
def test_dialled_endpoint(resource, endpoint):
    assert dialled_endpoint(resource) == endpoint
