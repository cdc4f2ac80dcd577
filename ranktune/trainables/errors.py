"""The error every part of a trial raises for bad user input; a leaf module, so methods can raise it
without importing the config schema (which imports the method registry)."""


class ConfigError(ValueError):
    """Bad user input, reported as one line per problem: `field: value -> what is allowed`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
