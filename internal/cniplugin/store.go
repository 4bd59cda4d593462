package cniplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The saved delegate configurations: one file per container, named by the
// container ID, holding the exact JSON the delegate was given on ADD. The
// layout is upstream's (see the package documentation).

func savedConfigPath(dataDir, containerID string) (string, error) {
	// skel already restricts container IDs to [a-zA-Z0-9][a-zA-Z0-9_.-]*;
	// this keeps Plugin safe when called some other way.
	if containerID == "" || containerID == "." || containerID == ".." ||
		strings.ContainsAny(containerID, `/\`) {
		return "", fmt.Errorf("invalid container ID %q", containerID)
	}
	return filepath.Join(dataDir, containerID), nil
}

// saveConfig writes conf atomically with mode 0600 (it may carry runtime
// configuration the runtime considers private): a crash leaves either no
// file or a complete one, never a torn file that DEL could not parse.
func saveConfig(dataDir, containerID string, conf []byte) error {
	path, err := savedConfigPath(dataDir, containerID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("save delegate config: %w", err)
	}
	f, err := os.CreateTemp(dataDir, "."+containerID+".tmp*")
	if err != nil {
		return fmt.Errorf("save delegate config: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	// CreateTemp already uses 0600; fsync so a crash after the rename
	// cannot leave an empty file behind the final name.
	_, err = f.Write(conf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("save delegate config %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save delegate config: %w", err)
	}
	return nil
}

// loadConfig returns the saved configuration; an error wrapping
// fs.ErrNotExist when there is none.
func loadConfig(dataDir, containerID string) ([]byte, error) {
	path, err := savedConfigPath(dataDir, containerID)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load delegate config: %w", err)
	}
	return data, nil
}

// removeConfig deletes the saved configuration; a missing one is fine.
func removeConfig(dataDir, containerID string) error {
	path, err := savedConfigPath(dataDir, containerID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove delegate config: %w", err)
	}
	return nil
}
