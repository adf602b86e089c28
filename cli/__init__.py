"""The ``loradex`` command line: thin click shells over ``registry`` and ``mergetools``."""
