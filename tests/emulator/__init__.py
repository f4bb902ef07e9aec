"""Emulations of the Asterisk side of AGI and FastAGI, built from captured traffic."""
