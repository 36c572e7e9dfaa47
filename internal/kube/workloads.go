package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// The writes a restore needs: Deployments scaled and annotated, Secrets created, replaced
// and deleted, pods waited for, HorizontalPodAutoscalers read, ports forwarded. Errors are
// client-go's (apierrors.IsNotFound works on them).

// ScaleDeployment sets the replicas of Deployment ns/name through its scale subresource.
func (c *Client) ScaleDeployment(ctx context.Context, ns, name string, replicas int32) error {
	body := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	return c.rc.Patch(types.MergePatchType).AbsPath("/apis/apps/v1/namespaces", ns, "deployments", name, "scale").
		Body([]byte(body)).Do(ctx).Error()
}

// AnnotateDeployment sets (value non-nil) or removes (nil) annotations of Deployment ns/name.
func (c *Client) AnnotateDeployment(ctx context.Context, ns, name string, annotations map[string]*string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	return c.rc.Patch(types.MergePatchType).AbsPath("/apis/apps/v1/namespaces", ns, "deployments", name).
		Body(patch).Do(ctx).Error()
}

// WaitNoPods waits until no pod of ns matches selector, checking every interval, for at
// most limit. It returns the names still there when the limit passed.
func (c *Client) WaitNoPods(ctx context.Context, ns, selector string, interval, limit time.Duration) ([]string, error) {
	deadline := time.Now().Add(limit)
	for {
		l, err := c.ListPods(ctx, ns, selector)
		if err != nil {
			return nil, err
		}
		if len(l.Items) == 0 {
			return nil, nil
		}
		if time.Now().After(deadline) {
			names := make([]string, len(l.Items))
			for i, p := range l.Items {
				names[i] = p.Name
			}
			return names, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// GetService reads the Service ns/name.
func (c *Client) GetService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	s := &corev1.Service{}
	return s, c.get(ctx, s, "/api/v1/namespaces", ns, "services", name)
}

// CreateSecret creates s in its namespace.
func (c *Client) CreateSecret(ctx context.Context, s *corev1.Secret) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	return out, c.create(ctx, "/api/v1/namespaces/"+s.Namespace+"/secrets", s, out)
}

// ReplaceSecret replaces the Secret s.Namespace/s.Name (s.ResourceVersion, when set, must
// match the live one).
func (c *Client) ReplaceSecret(ctx context.Context, s *corev1.Secret) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	err := c.rc.Put().AbsPath("/api/v1/namespaces", s.Namespace, "secrets", s.Name).Body(s).Do(ctx).Into(out)
	return out, err
}

// DeleteSecret deletes the Secret ns/name; a missing one is not an error.
func (c *Client) DeleteSecret(ctx context.Context, ns, name string) error {
	err := c.rc.Delete().AbsPath("/api/v1/namespaces", ns, "secrets", name).Do(ctx).Error()
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// PutSecret makes the Secret s.Namespace/s.Name hold exactly s's type, labels,
// annotations and data: created when missing, else replaced over the live version.
func (c *Client) PutSecret(ctx context.Context, s *corev1.Secret) error {
	live, err := c.GetSecret(ctx, s.Namespace, s.Name)
	if apierrors.IsNotFound(err) {
		w := s.DeepCopy()
		w.ResourceVersion = ""
		_, err = c.CreateSecret(ctx, w)
		return err
	}
	if err != nil {
		return err
	}
	w := s.DeepCopy()
	w.ResourceVersion = live.ResourceVersion
	w.UID = live.UID
	// ownerReferences and finalizers belong to the live object's controllers.
	w.OwnerReferences, w.Finalizers = live.OwnerReferences, live.Finalizers
	if w.Type == "" {
		w.Type = live.Type
	}
	if w.Type != live.Type {
		// A Secret's type cannot change in place.
		if err := c.DeleteSecret(ctx, s.Namespace, s.Name); err != nil {
			return err
		}
		w.ResourceVersion, w.UID = "", ""
		_, err = c.CreateSecret(ctx, w)
		return err
	}
	_, err = c.ReplaceSecret(ctx, w)
	return err
}

// HPA is the part of a HorizontalPodAutoscaler a restore reads.
type HPA struct {
	Name      string
	Namespace string
	// Target is the scaled object, "Deployment/flightctl-api".
	TargetKind, TargetName string
	MinReplicas            int32
}

// ListHPAs lists the HorizontalPodAutoscalers of ns (autoscaling/v2).
func (c *Client) ListHPAs(ctx context.Context, ns string) ([]HPA, error) {
	raw, err := c.rc.Get().AbsPath("/apis/autoscaling/v2/namespaces", ns, "horizontalpodautoscalers").Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	var l struct {
		Items []struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     struct {
				ScaleTargetRef struct {
					Kind string `json:"kind"`
					Name string `json:"name"`
				} `json:"scaleTargetRef"`
				MinReplicas *int32 `json:"minReplicas"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, fmt.Errorf("read HorizontalPodAutoscalers of namespace %s: %w", ns, err)
	}
	out := make([]HPA, 0, len(l.Items))
	for _, it := range l.Items {
		h := HPA{Name: it.Metadata.Name, Namespace: ns, TargetKind: it.Spec.ScaleTargetRef.Kind, TargetName: it.Spec.ScaleTargetRef.Name, MinReplicas: 1}
		if it.Spec.MinReplicas != nil {
			h.MinReplicas = *it.Spec.MinReplicas
		}
		out = append(out, h)
	}
	return out, nil
}

// PortForward forwards a local port on 127.0.0.1 to port of pod ns/pod through the API
// server (pods/portforward, SPDY), as kubectl port-forward does. It returns the local
// address once the forward listens; stop ends it.
func (c *Client) PortForward(ctx context.Context, ns, pod string, port int) (addr string, stop func(), err error) {
	rt, upgrader, err := spdy.RoundTripperFor(c.REST)
	if err != nil {
		return "", nil, fmt.Errorf("port-forward to pod %s/%s: %w", ns, pod, err)
	}
	u := c.rc.Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stopCh, readyCh := make(chan struct{}), make(chan struct{})
	errOut := &lineBuffer{}
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stopCh, readyCh, io.Discard, errOut)
	if err != nil {
		return "", nil, fmt.Errorf("port-forward to pod %s/%s: %w", ns, pod, err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	var once sync.Once
	stop = func() { once.Do(func() { close(stopCh) }) }
	select {
	case <-readyCh:
	case err := <-done:
		if err == nil {
			err = fmt.Errorf("ended before listening")
		}
		return "", nil, fmt.Errorf("port-forward to pod %s/%s port %d: %w", ns, pod, port, err)
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		stop()
		return "", nil, fmt.Errorf("port-forward to pod %s/%s: no local port: %v", ns, pod, err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))), stop, nil
}

// lineBuffer keeps the last lines client-go's port-forward writes about failed streams.
type lineBuffer struct{ b strings.Builder }

func (l *lineBuffer) Write(p []byte) (int, error) {
	if l.b.Len() < 4096 {
		l.b.Write(p)
	}
	return len(p), nil
}
