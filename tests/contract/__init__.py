"""The backend contract suite: one set of at-least-once cases, run against
every backend through a :class:`~tests.contract.kit.BackendKit`."""
