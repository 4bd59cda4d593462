// Package podrt is a stand-in for a container runtime's network setup: it
// creates a pod's network namespace and attaches it through libcni with a
// conflist, exactly as containerd or CRI-O would. `weft demo` uses it.
//
// CNI plugins treat the namespace they run in as the host, so the libcni
// calls must run inside the host's namespace. Rather than switching a
// thread of this process (see containernetworking's pkg/ns README on why
// that is fragile in Go), the caller re-executes the weft binary under
// `ip netns exec <host>` with a Request on stdin; Serve answers it there.
package podrt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// Request is one libcni operation, run inside a host namespace.
type Request struct {
	Op          string          `json:"op"` // add, check, del
	BinDir      string          `json:"binDir"`
	CacheDir    string          `json:"cacheDir"`
	Conflist    json.RawMessage `json:"conflist"`
	ContainerID string          `json:"containerID"`
	NetNS       string          `json:"netns"`
	IfName      string          `json:"ifName"`
}

// Reply is Serve's answer.
type Reply struct {
	Result *types100.Result `json:"result,omitempty"`
	Error  string           `json:"error,omitempty"`
}

// Serve reads a Request from in, performs it with libcni in the current
// namespace, and writes a Reply to out.
func Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	var req Request
	var reply Reply
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		reply.Error = "decode request: " + err.Error()
	} else if res, err := do(ctx, req); err != nil {
		reply.Error = err.Error()
	} else {
		reply.Result = res
	}
	return json.NewEncoder(out).Encode(reply)
}

func do(ctx context.Context, req Request) (*types100.Result, error) {
	list, err := libcni.ConfListFromBytes(req.Conflist)
	if err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{req.BinDir}, req.CacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: req.ContainerID, NetNS: req.NetNS, IfName: req.IfName}
	switch req.Op {
	case "add":
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return nil, err
		}
		return types100.NewResultFromResult(r)
	case "check":
		return nil, cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return nil, cni.DelNetworkList(ctx, list, rt)
	default:
		return nil, fmt.Errorf("unknown op %q", req.Op)
	}
}

// Client runs Requests in host namespaces by re-executing Self (the weft
// binary) with Subcommand under `ip netns exec`.
type Client struct {
	Self       string
	Subcommand string
}

// Do runs req inside namespace ns.
func (c Client) Do(ctx context.Context, ns string, req Request) (*types100.Result, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, c.Self, c.Subcommand)
	cmd.Stdin = bytes.NewReader(body)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s in %s: %w: %s", c.Self, c.Subcommand, ns, err, stderr.String())
	}
	var reply Reply
	if err := json.Unmarshal(stdout.Bytes(), &reply); err != nil {
		return nil, fmt.Errorf("%s reply: %w: %q", req.Op, err, stdout.String())
	}
	if reply.Error != "" {
		return nil, errors.New(reply.Error)
	}
	return reply.Result, nil
}
