"""The one compiled piece: pdwire's TOKEN_PACKS decoder (see pdwire/_tokenpacks.c).

Everything else is in pyproject.toml. ``optional``: without a C compiler the install still
succeeds and the master decodes token packs with the pure-Python ``safepickle`` (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pdwire._tokenpacks",
            ["pdwire/_tokenpacks.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
