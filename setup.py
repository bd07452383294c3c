"""
Packaging for quartet-sftpd.

The twistd plugin lives in C{twisted/plugins/} (no C{__init__.py} there, as
Twisted's plugin system wants) and is installed into Twisted's plugin
package alongside the other plugins.
"""

from setuptools import find_packages, setup

setup(
    name="quartet-sftpd",
    version="0.1.0",
    description=(
        "A Twisted Conch SFTP server that archives each completed upload "
        "and runs a QU4RTET capture rule on it."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["quartet_sftpd", "quartet_sftpd.*"])
    + ["twisted.plugins"],
    package_data={"quartet_sftpd": ["data/*.toml"]},
    install_requires=[
        "twisted[conch]>=24.3",
        "cryptography>=42",
        "bcrypt>=4",
        "pyasn1>=0.5",
        "defusedxml>=0.7",
        "prometheus-client>=0.20",
        "tomli-w>=1.0",
    ],
    extras_require={
        # capture = "quartet": quartet_capture in-process, with Celery.
        "quartet": [
            "quartet_capture>=4.1",
            "celery>=5.3",
            "django-model-utils>=4.3",
        ],
        # capture = "http": QU4RTET's capture API over HTTP.
        "http": ["treq>=23.11"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6",
            "paramiko>=3.4",
            "asyncssh>=2.14",
            "ssh-audit>=3.1",
            "quartet_capture>=4.1",
            "quartet_epcis>=4.1",
            "celery[redis]>=5.3",
            "django-model-utils>=4.3",
            "djangorestframework>=3.14",
            "djangorestframework-xml>=2.0",
            "drf-yasg>=1.21",
            "treq>=23.11",
        ],
    },
    entry_points={
        "console_scripts": ["quartet-sftpd = quartet_sftpd.cli:main"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: File Sharing",
    ],
)
