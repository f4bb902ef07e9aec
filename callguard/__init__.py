"""callguard: guards the outbound trunks of an Asterisk PBX against toll fraud."""

__version__ = "0.1.0"
