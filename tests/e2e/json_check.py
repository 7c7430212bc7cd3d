"""Checks of constrained output for the end-to-end tests: a small JSON
Schema validator for the keywords the tests use, and whether a text is a
prefix of some JSON document (what a completion cut by max_tokens must be).
No third-party validator: the tests need only these few keywords."""
import re


def validate(schema, value, path="#"):
    """The first violation of schema by value, as a string, or None.
    Keywords: type, properties, required, additionalProperties (false when
    properties are given and it is absent, as OpenAI's strict mode and
    retune's grammar take it), items, minItems, maxItems, enum, const,
    anyOf, minLength, maxLength."""
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        if not any(_is_type(t, value) for t in types):
            return f"{path}: {value!r} is not of type {types}"
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return f"{path}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{path}: {value!r} is not {schema['const']!r}"
    if "anyOf" in schema and all(validate(s, value, path) for s in schema["anyOf"]):
        return f"{path}: {value!r} matches none of anyOf"
    if isinstance(value, dict):
        return _validate_object(schema, value, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return f"{path}: {len(value)} items"
        for i, v in enumerate(value):
            err = validate(schema.get("items", {}), v, f"{path}/{i}")
            if err:
                return err
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return f"{path}: length {len(value)}"
    return None


def _validate_object(schema, value, path):
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", False if "properties" in schema else True)
    for name in schema.get("required", []):
        if name not in value:
            return f"{path}: '{name}' is missing"
    for k, v in value.items():
        sub = props.get(k, extra)
        if sub is False:
            return f"{path}: '{k}' is not allowed"
        err = validate(sub if isinstance(sub, dict) else {}, v, f"{path}/{k}")
        if err:
            return err
    return None


def _is_type(t, v):
    return {"object": isinstance(v, dict), "array": isinstance(v, list), "string": isinstance(v, str),
            "boolean": isinstance(v, bool), "null": v is None,
            "integer": isinstance(v, int) and not isinstance(v, bool),
            "number": isinstance(v, (int, float)) and not isinstance(v, bool)}.get(t, False)


def _same(a, b):
    return type(a) is type(b) and a == b or (_is_type("number", a) and _is_type("number", b) and a == b)


class _End(Exception):
    """The text ended where more was needed: a prefix so far."""


class _Bad(Exception):
    """The text cannot be the start of any JSON document."""


def is_json_prefix(text):
    """True when text is the start of some JSON document (or all of one)."""
    try:
        _Prefix(text).document()
    except _End:
        return True
    except _Bad:
        return False
    return True


class _Prefix:
    """A recursive-descent JSON reader that tells 'ended early' from 'wrong'."""

    def __init__(self, text):
        self.s, self.i = text, 0

    def peek(self):
        if self.i >= len(self.s):
            raise _End()
        return self.s[self.i]

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def lit(self, word):
        for c in word:
            if self.peek() != c:
                raise _Bad()
            self.i += 1

    def document(self):
        self.ws()
        self.value()
        self.ws()
        if self.i < len(self.s):
            raise _Bad()

    def value(self):
        c = self.peek()
        if c == "{":
            self.container("}", True)
        elif c == "[":
            self.container("]", False)
        elif c == '"':
            self.string()
        elif c in "tfn":
            self.lit({"t": "true", "f": "false", "n": "null"}[c])
        elif c == "-" or c.isdigit():
            self.number()
        else:
            raise _Bad()

    def container(self, close, keyed):
        self.i += 1
        self.ws()
        if self.peek() == close:
            self.i += 1
            return
        while True:
            if keyed:
                if self.peek() != '"':
                    raise _Bad()
                self.string()
                self.ws()
                self.lit(":")
                self.ws()
            self.value()
            self.ws()
            c = self.peek()
            self.i += 1
            if c == close:
                return
            if c != ",":
                raise _Bad()
            self.ws()

    def string(self):
        self.i += 1
        while True:
            c = self.peek()
            self.i += 1
            if c == '"':
                return
            if c == "\\":
                e = self.peek()
                self.i += 1
                if e == "u":
                    for _ in range(4):
                        if self.peek() not in "0123456789abcdefABCDEF":
                            raise _Bad()
                        self.i += 1
                elif e not in '"\\/bfnrt':
                    raise _Bad()
            elif ord(c) < 0x20:
                raise _Bad()

    def number(self):
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in "+-0123456789.eE":
            self.i += 1
        tail = self.s[start:self.i]
        if self.i == len(self.s):  # more digits may follow: a prefix of a number is enough
            if any(re.fullmatch(p, tail) for p in _NUMBER_PREFIXES):
                raise _End()
            raise _Bad()
        if not re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", tail):
            raise _Bad()


_NUMBER_PREFIXES = (r"-?(0|[1-9]\d*)?", r"-?(0|[1-9]\d*)\.\d*", r"-?(0|[1-9]\d*)(\.\d+)?[eE][+-]?\d*")
