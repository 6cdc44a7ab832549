"""Test doubles faked at the wire (HTTP servers on loopback), never inside the code under test."""
