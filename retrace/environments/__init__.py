"""Environments: where a debugger runs (a sysroot of linked packages, the release's chroot, mock) and the
sandbox around it."""
