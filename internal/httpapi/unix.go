package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// maxSocketPath is the longest path a unix socket may be bound at
// (sun_path holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// ServeUnix serves handler on a unix socket at path until ctx ends. Only
// the socket's owner (flanneld's user: root) and root may connect: the
// socket has mode 0600 from the moment it appears at path. A socket left
// at path by an earlier run, or served by another process, is replaced;
// anything else there is refused. When ctx ends the socket is removed,
// unless another process has replaced it meanwhile.
func ServeUnix(ctx context.Context, log *slog.Logger, path string, handler http.Handler) error {
	l, err := listenUnix(log, path)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	mine, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return fmt.Errorf("status socket: %w", err)
	}
	defer func() {
		if fi, err := os.Lstat(path); err == nil && os.SameFile(fi, mine) {
			_ = os.Remove(path)
		}
	}()
	log.Info("serving status", "socket", path)
	if err := serve(ctx, l, handler); err != nil {
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	return nil
}

// listenUnix binds a socket in a fresh directory of its own (mode 0700,
// beside path), sets its mode to 0600 and renames it to path. Binding at
// path directly would create the socket with the process umask's mode,
// connectable by anyone until a chmod; the umask itself is process-wide,
// so setting it would race with every other file the daemon creates.
func listenUnix(log *slog.Logger, path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := checkReplaceable(log, path); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".weft-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bind := filepath.Join(tmp, "s")
	if len(bind) > maxSocketPath {
		return nil, fmt.Errorf("%s: path too long for a unix socket (%d bytes while binding, at most %d)", path, len(bind), maxSocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bind, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The listener would unlink the name it was bound at, which is gone
	// after the rename; ServeUnix removes path itself.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(bind, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(bind, path); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// checkReplaceable allows replacing nothing, or a socket; a socket that
// still answers belongs to another process (an earlier flanneld not yet
// gone), which is logged: the newest daemon is the one to talk to.
func checkReplaceable(log *slog.Logger, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		log.Warn("replacing a status socket another process serves", "socket", path)
	}
	return nil
}
