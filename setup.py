"""Packaging for slimta: a gevent toolkit for building mail transfer agents."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "trustme>=1.1",
    "aiosmtpd>=1.4.6",
    "redis>=5",
    "prometheus_client>=0.20",
    "dkimpy>=1.1",
    "pynacl>=1.5",
    "cryptography>=42",
    "bcrypt>=4",  # so the bcrypt-hash tests of slimta.smtp.auth run
]
DEV_REQUIRES = [
    *TEST_REQUIRES,
    "ruff>=0.6",
    "mypy>=1.10",
    "types-gevent",
    "sphinx>=7",
    "matplotlib",  # bench/plot_results.py only
]

setup(
    name="slimta",
    version="0.1.0",
    description="Build mail transfer agents in Python on gevent "
    "(python-slimta 4.0 compatible API)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["slimta", "slimta.*"]),
    package_data={"slimta": ["py.typed"]},
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        "gevent>=24.2",
        "pycares>=4.4",
        "dnspython>=2.6",
        # libpass is the maintained fork of passlib; it installs the same
        # ``passlib`` module and works with current Python and bcrypt.
        "libpass>=1.9",
    ],
    extras_require={
        "redis": ["redis>=5"],
        "metrics": ["prometheus_client>=0.20"],
        # DKIM: signing uses cryptography; verification uses dkimpy (ed25519
        # verification needs PyNaCl).
        "dkim": ["dkimpy>=1.1", "pynacl>=1.5", "cryptography>=42"],
        # DANE-TA chain checks and SPKI selectors.
        "dane": ["cryptography>=42"],
        "test": TEST_REQUIRES,
        "dev": DEV_REQUIRES,
    },
    entry_points={
        "console_scripts": ["slimta = slimta.app:main"],
        # Fixtures for users' own tests (slimta.testing); loaded by pytest only.
        "pytest11": ["slimta = slimta.testing.pytest_plugin"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: System Administrators",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Communications :: Email :: Mail Transport Agents",
        "Typing :: Typed",
    ],
)
