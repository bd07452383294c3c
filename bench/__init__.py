"""
A side-by-side benchmark of quartet-sftpd, OpenSSH's sftp server and an
asyncssh SFTP server; run it with C{python bench/run.py} (see README.md).
"""
