"""The tests' SSH hosts are minicloud's embedded SSH hosts (one implementation)."""

from orchestrator.minicloud.sshd import ADDRESS, MakeSSHHosts, SSHHosts

__all__ = ["ADDRESS", "MakeSSHHosts", "SSHHosts"]
