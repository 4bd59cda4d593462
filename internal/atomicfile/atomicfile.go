// Package atomicfile writes a file so that readers and crashes see either
// the old content or the new, never a torn or empty file: the data goes
// to a temporary file in the same directory, with its final mode before
// the first byte, is synced, and is renamed over the path.
//
// A writer killed between creating its temporary file and the rename
// leaves that file behind. Each writer holds an exclusive flock(2) on its
// temporary file until the rename; the kernel drops the lock when the
// writer dies. So the next write of the same path removes the temporary
// files of that path nobody holds a lock on: those of dead writers. A
// live writer's file is never removed (its lock is held), except in the
// instant between its creation and its lock, where the removal costs that
// writer a failed rename (an error; the path keeps its old content),
// never a torn file: files are only ever removed by name, never written to.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Write writes data to path with mode perm (exactly: chmod, not cut by
// the umask), creating the directory (0755) if needed. Errors are one
// line, "write PATH: STEP: REASON", naming the file a reader knows (not
// the temporary one) and the system's reason ("read-only file system",
// "no space left on device"), which errors.Is matches (syscall.EROFS …).
func Write(path string, data []byte, perm os.FileMode) error {
	if err := write(path, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// tempPrefix is the name prefix of path's temporary files.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp" }

func write(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return step("create directory", err)
	}
	removeStale(dir, tempPrefix(path))
	f, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return step("create temporary file", err)
	}
	tmp := f.Name()
	// Closed after the rename: the lock says "being written" until then.
	defer f.Close()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return step("lock temporary file", err)
	}
	if err := f.Chmod(perm); err != nil {
		return step("chmod temporary file", err)
	}
	if _, err := f.Write(data); err != nil {
		return step("write temporary file", err)
	}
	// fsync so a crash right after the rename cannot leave an empty file.
	if err := f.Sync(); err != nil {
		return step("sync temporary file", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return step("rename temporary file", err)
	}
	// The rename is durable once the directory is; best effort.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// step names what failed and the system's reason, without repeating the
// temporary file's name (a *PathError's): "create temporary file:
// read-only file system".
func step(what string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		err = le.Err
	}
	return fmt.Errorf("%s: %w", what, err)
}

// removeStale removes dir's files named prefix* that no live writer
// holds (package doc). Best effort: a failure leaves them for next time.
func removeStale(dir, prefix string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		name := filepath.Join(dir, e.Name())
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			os.Remove(name)
		}
		f.Close()
	}
}
