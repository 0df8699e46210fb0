# Exact provider versions for this environment (the modules accept ranges).
terraform {
  required_version = ">= 1.9" # validations that read other variables
  required_providers {
    volcenginecc = {
      source  = "volcengine/volcenginecc"
      version = "0.0.53"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "2.35.1"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "2.17.0"
    }
    http = {
      source  = "hashicorp/http"
      version = "3.4.5"
    }
  }
}
