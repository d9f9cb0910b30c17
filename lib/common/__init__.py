"""What every part uses: the config loader, errors and exit codes, the device decision, processes, atomic
writes and run folders. Imports nothing else from lib."""
