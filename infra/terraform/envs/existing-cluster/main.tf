# The labkit platform on a cluster you already have: a cloud cluster, an on-premises one, or a
# local kind/minikube rehearsal (CPU only: set enable_gpu_profiles = false).

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}

provider "helm" {
  kubernetes {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}

module "platform" {
  source = "../../modules/workshop-platform"

  attendees                 = var.attendees
  doors_open                = var.doors_open
  auth_mode                 = var.auth_mode
  shared_password           = var.shared_password
  admin_password            = var.admin_password
  admin_users               = var.admin_users
  hub_service_type          = var.hub_service_type
  hub_source_ranges         = var.hub_source_ranges
  workshop_image            = var.workshop_image
  workshop_gpu_image        = var.workshop_gpu_image
  labs_repo                 = var.labs_repo
  labs_branch               = var.labs_branch
  user_limits               = var.user_limits
  enable_gpu_profiles       = var.enable_gpu_profiles
  enable_shared_gpu_profile = var.enable_shared_gpu_profile
  system_node_selector      = var.system_node_selector
  gpu_node_selector         = var.gpu_node_selector
  ray_workers_max           = var.ray_workers_max
  max_gpu_servers           = var.max_gpu_servers
  hf_endpoint               = var.hf_endpoint
  model_cache               = var.model_cache
}
