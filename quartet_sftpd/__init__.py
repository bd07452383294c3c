"""
quartet-sftpd: a Twisted Conch SFTP server that archives every completed
upload and runs the capture rule of the folder it was uploaded into.
"""

__version__ = "0.1.0"
