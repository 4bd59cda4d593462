package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Detach leaves the cluster running after this process exits: it records
// the processes in Dir/lab.json for Teardown, and makes Close a no-op.
// Only a cluster whose etcd runs out of process can be detached.
func (c *Cluster) Detach() error {
	if c.etcdProc == nil {
		return errors.New("detach: etcd runs inside this process")
	}
	st := state{Name: c.opts.Name, Pids: []int{c.etcdProc.Process.Pid}}
	for _, h := range c.Hosts {
		h.mu.Lock()
		if h.proc != nil {
			st.Pids = append(st.Pids, h.proc.Process.Pid)
		}
		h.mu.Unlock()
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.opts.Dir, "lab.json"), b, 0o644); err != nil {
		return err
	}
	c.detached = true
	return nil
}

type state struct {
	Name string `json:"name"`
	Pids []int  `json:"pids"`
}

// Teardown removes a detached cluster whose state is in dir: it kills its
// processes and deletes its namespaces. It is harmless when nothing is
// left. It reports whether there was anything to remove.
func Teardown(dir, name string) (bool, error) {
	found := false
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err == nil {
		var st state
		if err := json.Unmarshal(b, &st); err != nil {
			return false, fmt.Errorf("%s: %w", filepath.Join(dir, "lab.json"), err)
		}
		for _, pid := range st.Pids {
			if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.SIGKILL) == nil {
				found = true
			}
		}
		if st.Name != "" {
			name = st.Name
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if removeStale(name) > 0 {
		found = true
	}
	return found, os.RemoveAll(dir)
}
