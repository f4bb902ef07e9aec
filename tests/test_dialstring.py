"""Finding the dialled number in the dialstrings Asterisk reports in Dial events."""

import pytest

from callguard.metering.dialstring import dialled_number, masked

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
    ("",                                       None),
]
# fmt: on


@pytest.mark.parametrize("dialstring, number", DIALSTRINGS)
def test_dialled_number(dialstring, number):
    assert dialled_number(dialstring) == number


def test_masked_hides_credentials():
    assert masked("carrier:s3cret@192.0.2.10/09011234567") == "***@192.0.2.10/09011234567"
    assert "s3cret" not in masked("iax:s3cret@host/123")
