"""Pure wire parsers: bytes in, facts out. No I/O, no clock, no logging."""
