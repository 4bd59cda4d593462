package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A host's flannel directory (its subnet file's, seen by its commands as
// /run/flannel) can be a tmpfs of its own, which tests make read-only or
// fill up: as root, permissions stop no write, a read-only or full file
// system does. The tmpfs is mounted on the directory in this (the root)
// mount namespace, before the host's commands start: each of them gets a
// copy of the mount table with the tmpfs in it (`ip netns exec`), and
// remounting it read-only changes the file system itself, so every copy
// sees that at once. Cluster.Close unmounts it.

// RunDir is h's flannel directory: its subnet file's.
func (h *Host) RunDir() string { return filepath.Dir(h.SubnetFile) }

// MountRunDir mounts a tmpfs of size bytes on h's flannel directory.
// Start it before flanneld; anything already in the directory is hidden.
func (h *Host) MountRunDir(size int) error {
	dir := h.RunDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := run("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0755", size), "weft-lab", dir); err != nil {
		return err
	}
	h.mu.Lock()
	h.tmpfs = true
	h.mu.Unlock()
	// What Start and Exec create there, while the file system is writable.
	return os.MkdirAll(h.wireguardDir(), 0o700)
}

// RemountRunDir makes h's tmpfs read-only or writable again, for the
// commands running on h and those started later alike. Read-only is a
// property of the file system (its superblock), which every copy of the
// mount shares; `mount -o remount,ro` also marks this one mount
// read-only, and a copy made meanwhile (a command started) would keep
// that mark after the file system is writable again: so the mark is
// cleared at once (`remount,bind,rw` changes the mount, not the file
// system).
func (h *Host) RemountRunDir(readOnly bool) error {
	if !readOnly {
		return run("mount", "-o", "remount,rw", h.RunDir())
	}
	if err := run("mount", "-o", "remount,ro", h.RunDir()); err != nil {
		return err
	}
	return run("mount", "-o", "remount,bind,rw", h.RunDir())
}

// unmountRunDir undoes MountRunDir, if it was done.
func (h *Host) unmountRunDir() {
	h.mu.Lock()
	mounted := h.tmpfs
	h.tmpfs = false
	h.mu.Unlock()
	if mounted {
		_ = run("umount", "-l", h.RunDir())
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
