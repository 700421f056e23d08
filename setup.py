from setuptools import find_packages, setup

setup(
    name="txfanout",
    version="0.1.0",
    description="Scatter-gather HTTP gateway daemon on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.9",
    package_dir={"": "src", "twisted.plugins": "twisted/plugins"},
    packages=find_packages("src") + ["twisted.plugins"],
    install_requires=[
        "Twisted[tls]>=24.3",
        "klein>=24.8",
        "prometheus-client>=0.20",
        "service-identity>=24.1",
        "pyOpenSSL>=24.0",
        "tomli>=2; python_version<'3.11'",
    ],
    extras_require={
        # wheel: tests/test_packaging.py builds this project without build isolation;
        # aiohttp, matplotlib: tests/test_bench_smoke.py runs the bench harness.
        "test": ["pytest>=8", "pytest-twisted>=1.14", "hypothesis>=6", "treq>=24.9", "wheel",
                 "PyYAML>=6", "aiohttp>=3.9", "matplotlib>=3.8"],
        # python -m bench (also needs nginx, libnginx-mod-http-echo, wrk,
        # apache2-utils, nghttp2-client from the distribution)
        "bench": ["aiohttp>=3.9", "matplotlib>=3.8", "uvloop>=0.19; sys_platform != 'win32'"],
    },
    entry_points={"console_scripts": ["txfanout=txfanout.__main__:main"]},
)
