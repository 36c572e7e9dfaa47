package kube

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The reads a backup needs. Errors are client-go's (apierrors.IsNotFound works on them).

// GetSecret reads the Secret ns/name.
func (c *Client) GetSecret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	return s, c.get(ctx, s, "/api/v1/namespaces", ns, "secrets", name)
}

// ListSecrets lists the Secrets of ns matching the label selector.
func (c *Client) ListSecrets(ctx context.Context, ns, selector string) (*corev1.SecretList, error) {
	l := &corev1.SecretList{}
	err := c.rc.Get().AbsPath("/api/v1/namespaces", ns, "secrets").Param("labelSelector", selector).Do(ctx).Into(l)
	return l, err
}

// ListPods lists the Pods of ns matching the label selector.
func (c *Client) ListPods(ctx context.Context, ns, selector string) (*corev1.PodList, error) {
	l := &corev1.PodList{}
	err := c.rc.Get().AbsPath("/api/v1/namespaces", ns, "pods").Param("labelSelector", selector).Do(ctx).Into(l)
	return l, err
}

// GetDeployment reads the Deployment ns/name.
func (c *Client) GetDeployment(ctx context.Context, ns, name string) (*appsv1.Deployment, error) {
	d := &appsv1.Deployment{}
	return d, c.get(ctx, d, "/apis/apps/v1/namespaces", ns, "deployments", name)
}

func (c *Client) get(ctx context.Context, into runtime.Object, segments ...string) error {
	return c.rc.Get().AbsPath(segments...).Do(ctx).Into(into)
}

func (c *Client) create(ctx context.Context, path string, obj, into runtime.Object) error {
	return c.rc.Post().AbsPath(path).Body(obj).Do(ctx).Into(into)
}
