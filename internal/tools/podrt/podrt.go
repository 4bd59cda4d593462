// Package podrt is a stand-in for a container runtime's network setup: it
// attaches a pod's network namespace through libcni with a conflist,
// exactly as containerd or CRI-O would. `weft demo` and the CNI plugin's
// privileged tests use it.
//
// CNI plugins treat the namespace they run in as the host, so the libcni
// calls must run inside the host's namespace. Rather than switching a
// thread of this process (see containernetworking's pkg/ns README on why
// that is fragile in Go), the caller re-executes a binary that calls Serve
// under `ip netns exec <host>` with a Request on stdin.
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
	"github.com/containernetworking/cni/pkg/types"
)

// Request is one libcni operation, run inside a host namespace.
type Request struct {
	Op             string          `json:"op"` // add, check, del, status, validate
	BinDir         string          `json:"binDir"`
	CacheDir       string          `json:"cacheDir"`
	Conflist       json.RawMessage `json:"conflist"`
	ContainerID    string          `json:"containerID"`
	NetNS          string          `json:"netns"`
	IfName         string          `json:"ifName"`
	CapabilityArgs map[string]any  `json:"capabilityArgs,omitempty"`
}

// Reply is Serve's answer: the operation's result (ADD's CNI result,
// VALIDATE's capabilities) or the error, carrying the plugin's CNI error
// code when there is one (types.ErrInternal otherwise).
type Reply struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *types.Error    `json:"error,omitempty"`
}

// Serve reads a Request from in, performs it with libcni in the current
// namespace, and writes a Reply to out.
func Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	var req Request
	var reply Reply
	err := json.NewDecoder(in).Decode(&req)
	if err == nil {
		reply.Result, err = do(ctx, req)
	}
	if err != nil {
		reply.Error = types.NewError(types.ErrInternal, err.Error(), "")
		var cniErr *types.Error
		if errors.As(err, &cniErr) {
			reply.Error.Code = cniErr.Code
		}
	}
	return json.NewEncoder(out).Encode(reply)
}

func do(ctx context.Context, req Request) (json.RawMessage, error) {
	list, err := libcni.ConfListFromBytes(req.Conflist)
	if err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{req.BinDir}, req.CacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: req.ContainerID, NetNS: req.NetNS, IfName: req.IfName, CapabilityArgs: req.CapabilityArgs}
	switch req.Op {
	case "add":
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return nil, err
		}
		return json.Marshal(r)
	case "check":
		return nil, cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return nil, cni.DelNetworkList(ctx, list, rt)
	case "status":
		return nil, cni.GetStatusNetworkList(ctx, list)
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			return nil, err
		}
		return json.Marshal(caps)
	default:
		return nil, fmt.Errorf("unknown op %q", req.Op)
	}
}

// Client runs Requests in host namespaces by re-executing Self with Args
// (e.g. the weft binary with "pod-runtime") under `ip netns exec`, adding
// Env to its environment.
type Client struct {
	Self string
	Args []string
	Env  []string
}

// Do runs req inside namespace ns. A failure of the operation itself is
// returned as a *types.Error.
func (c Client) Do(ctx context.Context, ns string, req Request) (json.RawMessage, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, c.Self}, c.Args...)...)
	cmd.Env = append(cmd.Environ(), c.Env...)
	cmd.Stdin = bytes.NewReader(body)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s in %s: %w: %s", c.Self, ns, err, stderr.String())
	}
	var reply Reply
	if err := json.Unmarshal(stdout.Bytes(), &reply); err != nil {
		return nil, fmt.Errorf("%s reply: %w: %q", req.Op, err, stdout.String())
	}
	if reply.Error != nil {
		return nil, reply.Error
	}
	return reply.Result, nil
}
