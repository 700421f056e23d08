import re

from setuptools import find_packages, setup


def version() -> str:
    """txfanout.__version__, read without importing the package (its
    dependencies are not installed yet)."""
    with open("src/txfanout/__init__.py", encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


setup(
    name="txfanout",
    version=version(),
    description="Scatter-gather HTTP gateway daemon on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.9",
    package_dir={"": "src", "twisted.plugins": "twisted/plugins"},
    packages=find_packages("src") + ["twisted.plugins"],
    package_data={"txfanout": ["py.typed"]},  # PEP 561: its type hints are for checkers
    # Floors: the oldest releases the code and tests work with, each pinned in
    # constraints-lowest.txt (which says what fails below it); .ci/run tests them.
    install_requires=[
        "Twisted[tls]>=25.5",
        "klein>=23.5",
        "Werkzeug>=0.15.5",  # klein's; the admin face catches its routing errors
        "prometheus-client>=0.18",
        "service-identity>=23.1",
        "pyOpenSSL>=24.3",
        "tomli>=1.1; python_version<'3.11'",
    ],
    extras_require={
        # wheel: tests/test_packaging.py builds this project without build isolation;
        # aiohttp, matplotlib: tests/test_bench_smoke.py runs the bench harness;
        # mypy, mypy-zope: .ci/run type-checks (mypy 2 runs on Python 3.10+ only);
        # tomli: mypy reads _compat's Python < 3.11 branch.
        "test": ["pytest>=6.2.4", "pytest-twisted>=1.13", "hypothesis>=4.24.3", "treq>=20.9",
                 "wheel>=0.32", "PyYAML>=6", "aiohttp>=3.8.3", "matplotlib>=3.7.3",
                 "mypy>=2.0; python_version>='3.10'",
                 "mypy-zope>=1.0.15; python_version>='3.10'", "tomli>=1.1"],
        # python -m bench (also needs nginx, libnginx-mod-http-echo, wrk,
        # apache2-utils, nghttp2-client from the distribution)
        "bench": ["aiohttp>=3.8.3", "matplotlib>=3.7.3", "uvloop>=0.19; sys_platform != 'win32'"],
    },
    entry_points={"console_scripts": ["txfanout=txfanout.__main__:main"]},
)
