# Every version the platform installs is pinned here, in one place.
terraform {
  required_version = ">= 1.8" # provider functions (provider::kubernetes::manifest_decode_multi)
  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.33.0, < 3.0.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.15.0, < 3.0.0"
    }
    http = {
      source  = "hashicorp/http"
      version = ">= 3.4.0, < 4.0.0"
    }
  }
}

locals {
  versions = {
    kuberay          = "1.7.0"  # operator chart, CRDs and operator image
    jupyterhub_chart = "4.4.0"  # zero-to-jupyterhub
    ray              = "2.60.0" # = labkit's ray pin and the workshop image's base
    python           = "py311"  # = the workshop image's Python
    labkit           = "0.1.0"
  }
  kuberay_operator_image = "quay.io/kuberay/operator:v${local.versions.kuberay}"
  kuberay_crd_files      = ["ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml", "ray.io_raycronjobs.yaml"]
}
