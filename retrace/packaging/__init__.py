"""Packaging: releases, their repositories and packages, and the files a crash needs from them.

Every question about a package format or a repository is answered here;
the worker, the kernel path, reposync and cleanup only ask.
"""
