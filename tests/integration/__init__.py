"""The integration tier: the product against real OpenSSH sshd and HAProxy on loopback."""
