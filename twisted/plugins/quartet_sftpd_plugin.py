"""
The twistd plugin: C{twistd -n quartet-sftpd --config quartet-sftpd.toml}.
"""

from twisted.application.service import ServiceMaker

quartet_sftpd = ServiceMaker(
    "quartet-sftpd",
    "quartet_sftpd.tap",
    "SFTP server that runs a QU4RTET capture rule on every completed upload",
    "quartet-sftpd",
)
